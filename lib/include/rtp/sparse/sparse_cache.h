#pragma once
// The sparse model's KV cache, as an AttentionSeam for batch-1 inference: retrieval KV heads keep every token's
// k/v plus its 16-dim index key, streaming KV heads keep a ring buffer of sink + window tokens (layout of
// kernels/include/rtp/kernels/sparse_attention_params.h). The first forward (the prompt) runs the sparse prefill
// and fills the caches; every later forward is one token, decoded through rtp::ops::sparse_decode (token-level
// top-p for retrieval heads, the ring for streaming heads).
#include <torch/types.h>

#include <vector>

#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/sparse_attention.h"

namespace rtp::sparse {

class SparseCache : public model::AttentionSeam {
 public:
  // `capacity`: the most tokens the retrieval heads will hold (prompt + generated).
  SparseCache(const model::ModelConfig& config, HeadMap heads, SparseSettings settings, const Indexer* indexer,
              int64_t capacity, torch::Device device, torch::ScalarType dtype);

  torch::Tensor attend(const model::LayerAttentionInputs& in) override;

  // Forward options that continue the cached sequence through this cache.
  model::ForwardOptions options();
  int64_t length() const { return length_; }
  // Bytes the caches hold for length() tokens: retrieval heads length x (2 D + index_dim), streaming heads
  // min(length, sink + window) x 2 D, times the element size. dense_bytes(): 2 D x length for every KV head.
  int64_t bytes() const;
  int64_t dense_bytes() const;
  int64_t layer_bytes(int64_t layer) const;
  // Attended and causal (query, key) pairs of the prompt's sparse prefill, per layer and KV head.
  const SparseStats& prefill_stats() const { return prefill_.stats(); }
  // Tokens each retrieval KV head attended at the last decode step, per layer (for reports).
  const std::vector<torch::Tensor>& last_selected() const { return last_selected_; }

 private:
  void write_token(int64_t layer, int64_t position, const model::LayerAttentionInputs& in, int64_t row);
  void write_prompt(int64_t layer, const model::LayerAttentionInputs& in, int64_t T);

  model::ModelConfig config_;
  HeadMap heads_;
  SparseSettings settings_;
  const Indexer* indexer_;
  int64_t capacity_;
  SparseAttention prefill_;
  std::vector<std::vector<kernels::HeadKind>> kinds_;
  std::vector<torch::Tensor> full_k_, full_v_, index_k_, ring_k_, ring_v_;
  std::vector<torch::Tensor> last_selected_;
  int64_t length_ = 0;
  int64_t element_size_ = 4;
};

}  // namespace rtp::sparse
