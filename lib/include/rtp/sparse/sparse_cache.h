#pragma once
// The sparse model's KV cache, as an AttentionSeam for batch-1 inference: retrieval KV heads keep every token's
// k/v plus its 16-dim index key, streaming KV heads keep a ring buffer of sink + window tokens (layout of
// kernels/include/rtp/kernels/sparse_attention_params.h). The first forward (the prompt) runs the sparse prefill
// and fills the caches; every later forward is one token, decoded through rtp::ops::sparse_decode (token-level
// top-p for retrieval heads, the ring for streaming heads). As a StepAttention (rtp/model/step_attention.h) the
// decode stepper's graphs store each decoded token (k/v, ring slot, index key, the indexer's queries) and only the
// decode kernels run eagerly; forward() takes the same two calls, so both paths give the same result.
//
// Chunked prefill (begin_prompt, prefill_chunked): the prompt comes in several forwards; each chunk's queries
// attend to the cached prompt tokens before them and to the chunk's own, with the rules of a one-shot prefill
// (same lists, same windows), so the results equal one forward over the whole prompt while no step holds more
// than chunk x (tokens so far) scores. Retrieval heads write the chunk's k/v/index keys to the full caches and
// then select and attend. Streaming heads attend to [sinks, the ring's tokens from the chunk's first window on,
// the chunk's own k/v] and write the chunk to the ring only afterwards: a chunk longer than the window would
// otherwise overwrite ring slots its first queries still need (query q0 needs token q0 - window + 1, and
// writing tokens up to q0 + n - 1 reuses that slot as soon as n >= 1 and the ring has wrapped).
#include <torch/types.h>

#include <vector>

#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/kernels/sparse_token_store.h"
#include "rtp/model/qwen3.h"
#include "rtp/model/step_attention.h"
#include "rtp/sparse/sparse_attention.h"

namespace rtp::sparse {

class SparseCache : public model::AttentionSeam, public model::StepAttention {
 public:
  // `capacity`: the most tokens the retrieval heads will hold (prompt + generated).
  SparseCache(const model::ModelConfig& config, HeadMap heads, SparseSettings settings, const Indexer* indexer,
              int64_t capacity, torch::Device device, torch::ScalarType dtype);

  torch::Tensor attend(const model::LayerAttentionInputs& in) override;

  // StepAttention: one decoded token after the prompt (null from begin_step while the prompt is not in).
  std::shared_ptr<const void> begin_step(int64_t position) override;
  void store_token(const model::LayerAttentionInputs& in, const torch::Tensor& position) override;
  void attend_token(const model::LayerAttentionInputs& in, int64_t position, torch::Tensor& out) override;
  // On a GPU (bf16, head_dim 64 or 128) the decode kernels read the position from device memory: the decode stepper
  // captures them with the layers, one graph per step. The same kernels and splits as attend_token's: equal results.
  bool attends_on_device(int64_t query_heads) const override;
  void attend_token_on_device(const model::LayerAttentionInputs& in, const torch::Tensor& position,
                              torch::Tensor& out) override;
  void end_step(int64_t position) override { length_ = position + 1; }
  // false: the steps attend through attend_token (between the graphs), e.g. for comparisons.
  void set_device_attention(bool on) { device_attention_ = on; }

  // Announces a prompt of `tokens` tokens that will come in several forwards (chunks) through options(); every
  // chunk but the last must end at a multiple of block_size (a retrieval query block is selected from all its
  // queries at once). Call it on an empty cache. Without it the first forward is the whole prompt.
  void begin_prompt(int64_t tokens);

  // Forgets every token (and the prompt's statistics) but keeps the buffers, so that a decode stepper's graphs for
  // them stay valid: an eval reuses one cache for its samples.
  void clear();

  // On a GPU each decoded token is stored by one kernel (rtp/kernels/sparse_token_store.h), which reads the indexer's
  // weights as they were when the cache was built; false: the eager gathers and copies (for comparisons).
  void set_fused_token_store(bool on) { fused_store_ = on && fused_store_available_; }
  bool fused_token_store() const { return fused_store_; }
  // Layer stores the kernel took, counted on the host (a graph replay runs it without the host knowing): lets tests
  // and benchmarks see that the path was taken.
  int64_t fused_token_stores() const { return fused_stores_; }

  // Forward options that continue the cached sequence through this cache.
  model::ForwardOptions options();
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  const SparseSettings& settings() const { return settings_; }
  // Bytes the caches hold for length() tokens: retrieval heads length x (2 D x the element size + index_dim x the
  // index keys' element size: bf16 on a GPU, float32 on the CPU), streaming heads min(length, sink + window) x 2 D x
  // the element size. dense_bytes(): 2 D x length x the element size for every KV head.
  int64_t bytes() const;
  int64_t dense_bytes() const;
  int64_t layer_bytes(int64_t layer) const;
  // Attended and causal (query, key) pairs of the prompt's sparse prefill, per layer and KV head.
  const SparseStats& prefill_stats() const;
  // Tokens each retrieval KV head attended at the last decode step, per layer (for reports).
  const std::vector<torch::Tensor>& last_selected() const { return last_selected_; }

 private:
  // The k/v (and index keys) of positions start..start+T-1, rows 0..T-1 of `in`, into the full caches / the ring.
  void write_full(int64_t layer, const model::LayerAttentionInputs& in, int64_t start, int64_t T);
  // k_str, v_str: the streaming heads' rows [n_str, T, D] in the ring's dtype (streaming_kv).
  void write_ring(int64_t layer, const torch::Tensor& k_str, const torch::Tensor& v_str, int64_t start, int64_t T);
  std::pair<torch::Tensor, torch::Tensor> streaming_kv(const model::LayerAttentionInputs& in) const;
  torch::Tensor attend_chunk(const model::LayerAttentionInputs& in, int64_t start);
  void add_chunk_stats(int64_t layer, int64_t start, int64_t T, const ops::BlockLists* lists);

  model::ModelConfig config_;
  HeadMap heads_;
  SparseSettings settings_;
  const Indexer* indexer_;
  int64_t capacity_;
  SparseAttention prefill_;
  std::vector<std::vector<kernels::HeadKind>> kinds_;
  std::vector<torch::Tensor> full_k_, full_v_, index_k_, ring_k_, ring_v_;
  std::vector<torch::Tensor> last_selected_;
  // Per layer, the KV heads (rows of k/v) of each kind on the cache's device; undefined when every head of the layer
  // has that kind (no gather needed).
  std::vector<torch::Tensor> retrieval_rows_, streaming_rows_;
  // Per layer, the streaming KV heads as an index tensor that is always defined (built once: an index made from host
  // memory per call waits for the device's queue).
  std::vector<torch::Tensor> all_streaming_rows_;
  // Decode steps: the ring slot of the step's token (int64 [1], set by begin_step), the indexer's queries of each
  // layer's token (store_token's, read by attend_token), and a token that lives as long as the buffers (which never
  // move: they are allocated for the capacity up front).
  torch::Tensor ring_slot_;
  std::vector<torch::Tensor> step_index_q_;
  std::shared_ptr<const void> buffers_ = std::make_shared<int>(0);
  // The fused store (GPU): per layer the indexer's weights in the cache's dtype ([n_ret, dim, D], [n_ret G, dim, D])
  // and the kernel's parameters that do not change between steps.
  bool fused_store_available_ = false, fused_store_ = false;
  int64_t fused_stores_ = 0;
  std::vector<torch::Tensor> store_k_weight_, store_q_weight_;
  std::vector<kernels::SparseTokenStoreParams> store_params_;
  bool store_fused(const model::LayerAttentionInputs& in, const torch::Tensor& position);
  ops::DecodeInputs decode_inputs(const model::LayerAttentionInputs& in, torch::Tensor& out);
  bool device_attention_ = true;
  int64_t length_ = 0;
  int64_t element_size_ = 4;
  int64_t prompt_length_ = 0;  // begin_prompt's; 0: the first forward is the prompt
  bool chunked_ = false;       // the prompt went through attend_chunk
  // The chunks' stats. A retrieval head's attended pairs follow from its lists' counts alone (add_chunk_stats), so a
  // chunk only keeps its counts ([Hkv_ret, query blocks] on their device) and prefill_stats() reads them all at once:
  // reading them per chunk and layer made the host wait for the device every layer, and summing them there cost a
  // dozen small device ops per layer.
  struct ChunkCounts {
    int64_t layer, start, end;
    torch::Tensor counts;
  };
  mutable SparseStats chunk_stats_;
  mutable std::vector<ChunkCounts> chunk_counts_;
};

// Prefills `prompt` (int64 [1, P]) through an empty `cache` in chunks of `chunk` tokens (a multiple of the
// block size; chunk <= 0 or >= P, or P below the settings' dense_below: one forward). Returns the next-token
// logits [1, 1, V] (the LM head runs for the last position only).
torch::Tensor prefill_chunked(model::Qwen3Model& model, SparseCache& cache, const torch::Tensor& prompt,
                              int64_t chunk);

}  // namespace rtp::sparse
