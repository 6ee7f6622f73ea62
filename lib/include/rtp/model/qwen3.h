#pragma once
// Qwen3 and Qwen3-MoE causal language models in libtorch, numerically following Hugging Face transformers.
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rtp/kernels/gemv_layout.h"
#include "rtp/kernels/moe_decode.h"
#include "rtp/model/attention_seam.h"
#include "rtp/model/kv_cache.h"
#include "rtp/model/model_config.h"
#include "rtp/model/rope.h"

namespace rtp::model {

// Called once per layer during forward with that layer's attention inputs (for head profiling, indexer
// training): lets callers capture pre-RoPE q/k, or compute attention statistics, without the model knowing.
using AttentionObserver = std::function<void(const LayerAttentionInputs&)>;

struct ForwardOptions {
  AttentionSeam* attention = nullptr;  // nullptr: dense SDPA
  AttentionObserver observer;          // optional
  int64_t position_offset = 0;         // first position id (for continuing a sequence)
  bool return_hidden = false;          // stop before the LM head and return the final normed hidden states
  // Logits of the last position only, [B, 1, V]: a prompt's next-token logits without the LM head over every position
  // (for a 16K-token chunk of Qwen3, 10 GB of float32 logits and a 5 TFLOP product, all but one row unused).
  bool last_position_logits = false;
  int64_t stop_after_layer = -1;       // >= 0: run only layers [0, stop_after_layer] (profiling cheap prefixes)
  // Continue a sequence: positions start at cache->length(), attention covers cached + new tokens, and the new
  // k/v are appended. Dense attention only (the seam receives q of the new tokens and k/v of all tokens).
  KVCache* cache = nullptr;
};

// The residual stream between decoder layers: the hidden states are base + pending. The add is left to the norm that
// reads it next (one fused kernel on a GPU instead of an add and a norm); with pending empty, base is the state.
struct ResidualStream {
  torch::Tensor base, pending;
  // A projection not run yet: pending is pending_x pending_w^T. A decode step on a GPU defers its o and down
  // projections so that the residual add + RMSNorm after each runs in the same launch (ops::linear_decode_add_rms_norm).
  torch::Tensor pending_x = {}, pending_w = {};
  // An MoE block not run yet: pending is ops::moe_decode of these. A decode step on a GPU defers it so that the next
  // residual add + RMSNorm runs in its down pass's launch (ops::moe_decode_add_rms_norm).
  struct PendingExperts {
    torch::Tensor x, expert, weight, gate_up, down;  // x [N, H], the rest as moe_decode takes them
  };
  PendingExperts pending_experts = {};
  torch::Tensor resolved() const;  // base plus whatever is pending
};

class Qwen3ModelImpl;

class Qwen3Model {
 public:
  // Parameters allocated on `device` in `dtype` (norms ones, the rest zeros): a full-size model is built where it
  // runs, never staged through host memory.
  explicit Qwen3Model(const ModelConfig& config, torch::Device device = torch::kCPU,
                      torch::ScalarType dtype = torch::kFloat32);
  ~Qwen3Model();
  Qwen3Model(Qwen3Model&&) noexcept;
  Qwen3Model& operator=(Qwen3Model&&) noexcept;

  const ModelConfig& config() const;
  // The torch module holding every parameter under its Hugging Face name (model.layers.0.self_attn.q_proj...).
  torch::nn::Module& module();
  // Parameters keyed by Hugging Face names.
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;

  void to(torch::Device device, torch::ScalarType dtype);
  torch::Device device() const;
  torch::ScalarType dtype() const;

  // input_ids int64 [B, T] -> logits [B, T, V] (float32), or hidden states with return_hidden.
  torch::Tensor forward(const torch::Tensor& input_ids, const ForwardOptions& options = {});

  // The pieces forward() is made of, for callers that run each layer's attention themselves (DecodeStepper):
  // forward = embed, then per layer attention_inputs -> attention -> finish_layer, then lm_logits.
  torch::Tensor embed(const torch::Tensor& ids_on_device) const;  // [B, T] -> [B, T, hidden]
  // Input norm, q/k/v projections, q_norm/k_norm and RoPE of layer `layer` for hidden states x [B, T, hidden]; the
  // norm resolves x's pending add (x.base becomes the sum).
  // slot (a decode step): where the q/k/v projection's launch may store the token into the cache itself
  // (GemvEpilogues::kv_store); the result's token_stored says whether it did.
  LayerAttentionInputs attention_inputs(int64_t layer, ResidualStream& x, const RopeTables& rope,
                                        const TokenSlot& slot = {}) const;
  // x + o_proj(attention [B, Hq, T, D]), then the post-attention norm and the MLP, whose output is left pending.
  ResidualStream finish_layer(int64_t layer, ResidualStream x, const torch::Tensor& attention) const;
  torch::Tensor lm_logits(ResidualStream x) const;  // final norm and LM head, float32 [B, T, V]
  // Whether the layers' work for `tokens` tokens (batch x length) reads no device value on the host, so that a CUDA
  // graph can capture it: true without MoE layers, and for MoE on a GPU up to ops::kMoeDecodeMaxTokens tokens (the
  // experts read by id on the device instead of grouped by counts read on the host).
  bool forward_reads_no_host_values(int64_t tokens) const;
  // false: MoE layers always take the grouped path (for comparisons: rtpurbo-bench-decode's "grouped" rows).
  void set_moe_experts_by_id(bool on);
  // How the experts-by-id kernels of a decode step are cut into warps (the same result for every shape; default
  // MoeDecodeLaunchShape{}); rtpurbo-bench-decode --moe-launch-shape.
  void set_moe_launch_shape(const kernels::MoeDecodeLaunchShape& shape);
  const kernels::MoeDecodeLaunchShape& moe_launch_shape() const;
  // Decode projections (a few tokens on a GPU) take the GEMV kernel where the output is at most `ratio` times the
  // reduction (ops::gemv_preferred; default ops::kDecodeGemvMaxRatio), cuBLAS elsewhere; for comparisons:
  // rtpurbo-bench-decode --gemv-max-ratio.
  void set_gemv_max_ratio(int64_t ratio);
  // The GEMV's warp layout for those projections (default Auto, gemv_layout.h); rtpurbo-bench-decode --gemv-layout.
  void set_gemv_layout(kernels::GemvLayout layout);
  // The LM head of a decode step (a few tokens on a GPU) by the GEMV with float32 logits (ops::linear_decode_logits),
  // not cuBLAS and a cast (default on); rtpurbo-bench-decode --cublas-lm-head.
  void set_lm_head_gemv(bool on);
  // How a prompt chunk after the first attends in the dense forward (attention_seam.h; default SplitCudnn where it
  // applies); rtpurbo-bench-decode --chunk-attention.
  void set_chunk_attention(ChunkAttention chunk);
  // Work a decode step on a GPU runs in a projection's GEMV launch (gemv.h's epilogues) instead of as kernels of its
  // own, each a kernel boundary less per layer; on by default where the step measured faster (docs/decode.md, "Work
  // in the projection's launch").
  struct GemvEpilogues {
    // The residual add + RMSNorm after the o and dense down projections (ops::linear_decode_add_rms_norm), for
    // projections of at most ops::kFusedAddNormMaxM outputs; rtpurbo-bench-decode --separate-norms.
    bool add_norm = true;
    // The widest projection (outputs) that takes it; 0: ops::kFusedAddNormMaxM. rtpurbo-bench-decode
    // --fused-norm-max-m.
    int64_t add_norm_max_m = 0;
    // The q/k RMSNorm + RoPE after the fused q/k/v projection (ops::linear_decode_qk_norm_rope). On since f56073a: with
    // the small launch parameters (03f8caa) the step is 0.2-0.9% faster on Qwen3-30B-A3B and within +-0.5% on 0.6B and
    // 8B (H100; at 6cb9e54, every launch carrying all epilogues' parameters, it was 0.5-2% slower);
    // rtpurbo-bench-decode --separate-qk-norm.
    bool qk_norm_rope = true;
    // With qk_norm_rope, a dense cache's token store (k and v rows into the cache at the step's slot) in the same
    // launch (ops::QkvTokenStore), a kernel less per layer. On since 2026-12-07: the dense step 4.2% / 3.0% faster on
    // Qwen3-0.6B at 4K / 32K, 1.1% on 8B, 2.5% on 30B-A3B at 4K (H100; docs/decode.md "The token store in the q/k/v
    // projection's launch"); rtpurbo-bench-decode --separate-kv-store.
    bool kv_store = true;
    // The MoE routing after the router projection (ops::linear_decode_moe_route); --separate-routing.
    bool moe_routing = true;
    // The residual add + RMSNorm after an MoE block, in its down pass's launch (ops::moe_decode_add_rms_norm; not a
    // GEMV, the same epilogue); --separate-moe-norm.
    bool moe_add_norm = true;
    // A dense MLP's SwiGLU in its gate/up projection's launch (ops::linear_decode_swiglu), a kernel less per dense
    // layer: the step 0.8-1.6% faster on Qwen3-0.6B, 0.3-0.4% on 8B (H100, 2026-12-07; docs/decode.md "SwiGLU in the
    // gate/up projection's launch"); --separate-swiglu.
    bool swiglu = true;
  };
  void set_gemv_epilogues(const GemvEpilogues& on);
  const GemvEpilogues& gemv_epilogues() const;
  // How many times each fused launch ran (tests).
  struct GemvEpilogueLaunches {
    int64_t add_norm = 0, qk_norm_rope = 0, moe_routing = 0, moe_add_norm = 0, kv_store = 0, swiglu = 0;
  };
  GemvEpilogueLaunches gemv_epilogue_launches() const;

  // Randomly initialised weights (normal(0, std) for matrices, ones for norms): toy model and scale runs.
  // On CPU the draw is float32 from a CPU generator (the committed toy model depends on it); on a GPU the
  // weights are drawn in place on the device from a generator of that device seeded with `seed`.
  void init_random(uint64_t seed, double std = 0.02);

 private:
  std::unique_ptr<Qwen3ModelImpl> impl_;
};

// Feeds `prompt` (int64 [B, P], P > 0) through `cache` in forwards of at most `chunk` tokens; returns the next-token
// logits [B, 1, V] (the LM head runs for the last position only). The dense counterpart of sparse::prefill_chunked.
torch::Tensor prefill_chunked(Qwen3Model& model, KVCache& cache, const torch::Tensor& prompt, int64_t chunk);

// Greedy decoding: prefills `prompt` (int64 [B, P]) in chunks of `prefill_chunk` tokens through a KV cache, then
// appends the argmax token until `max_new_tokens` or, per sequence, a token in `stop_ids` (later positions of a
// stopped sequence repeat its stop token). Returns int64 [B, P + generated]. The tokens after the prompt come from
// a DecodeStepper (CUDA graphs on a GPU unless cuda_graphs is false).
torch::Tensor generate_greedy(Qwen3Model& model, const torch::Tensor& prompt, int64_t max_new_tokens,
                              const std::vector<int64_t>& stop_ids = {}, int64_t prefill_chunk = 4096,
                              bool cuda_graphs = true);

// Loads a Hugging Face checkpoint directory (config.json + *.safetensors [+ model.safetensors.index.json]).
// Every tensor the config needs must be present with the shape the config implies; tensors are converted to
// `dtype` and placed on `device`.
Qwen3Model load_qwen3(const std::string& dir, torch::Device device, torch::ScalarType dtype);

// The architecture of `dir`/config.json with random weights (Qwen3Model::init_random), built on `device`: speed and
// memory runs of a full-size model without its weights. Only config.json is read.
Qwen3Model random_qwen3(const std::string& dir, torch::Device device, torch::ScalarType dtype, uint64_t seed,
                        double std = 0.02);

// Writes config.json and model.safetensors (atomically) in Hugging Face layout.
void save_qwen3(const Qwen3Model& model, const std::string& dir, torch::ScalarType dtype = torch::kFloat32);

}  // namespace rtp::model
