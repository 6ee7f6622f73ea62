#pragma once
// Torch-facing projection of a decode step's few tokens (rtp/kernels/gemv.h): x W^T without bias, by the GEMV kernel
// on a GPU for up to kernels::kGemvMaxRows rows, at::linear otherwise.
#include <torch/types.h>

#include <tuple>
#include <utility>

#include "rtp/kernels/gemv_layout.h"

namespace rtp::ops {

// Whether linear_decode takes the kernel: a CUDA build; x [..., k] on a GPU with at most 4 rows, unit element stride
// and evenly spaced rows; weight [m, k] contiguous of x's dtype (bf16 or float32) and device; no gradient wanted.
bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [..., k] -> [..., m] in x's dtype: the kernel wherever gemv_supported, its warps laid out as `layout` says.
torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight,
                            kernels::GemvLayout layout = kernels::GemvLayout::Auto);

// The logits of a decode step's LM head: x [..., k] -> float32 [..., m], each value x W^T rounded to x's dtype as
// at::linear(x, weight).to(float32) gives it, by the GEMV in one launch wherever gemv_supported (no cast kernel; on an
// H100 the whole-rows GEMV read Qwen3-30B-A3B's 622 MB head in 199 us against cuBLAS's 210), at::linear then the
// cast elsewhere.
torch::Tensor linear_decode_logits(const torch::Tensor& x, const torch::Tensor& weight,
                                   kernels::GemvLayout layout = kernels::GemvLayout::Auto);

// A decode step's dense MLP activation: x [..., k] and the joined gate/up weight [2I, k] (gate rows, then up rows) ->
// silu(x G^T) * (x U^T) [..., I], as swiglu(linear_decode(x, weight) halves) gives it, bit for bit with the
// whole-rows GEMV, in one launch (gemv.h's SwiGLU: each warp a gate row and its up row). Supported where
// gemv_supported and the weight has an even number of rows.
bool gemv_swiglu_supported(const torch::Tensor& x, const torch::Tensor& weight);
torch::Tensor linear_decode_swiglu(const torch::Tensor& x, const torch::Tensor& weight);

// The ratio the decode step uses: every projection of a Qwen3 layer (m/k at most 6: the fused gate/up) on the GEMV, the
// LM head (m/k 37-148) with cuBLAS. The gate/up lost 3-5% of the step on the split-rows GEMV (H100, ratio 4 then);
// on the whole-rows layout it gains (H200: Qwen3-0.6B 4-5% per token, Qwen3-8B 1.5%; docs/decode.md, "The GEMV's
// whole-rows layout").
inline constexpr int64_t kDecodeGemvMaxRatio = 8;

// The model's choice per weight [m, k]: the GEMV kernel where m <= max_ratio * k, cuBLAS elsewhere.
bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio = kDecodeGemvMaxRatio);

// linear_decode (in `layout`) where gemv_preferred(weight, max_ratio), at::linear elsewhere.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio = kDecodeGemvMaxRatio,
                      kernels::GemvLayout layout = kernels::GemvLayout::Auto);

// The model fuses the add + RMSNorm into projections with at most this many outputs. Its last-block count costs per block
// (2 rows each), so the gain of the saved kernel shrinks with m: H100, ms per token with / without the fused launch,
// Qwen3-0.6B (1024) 1.15 / 1.37 at 4K, Qwen3-30B-A3B (2048) 4.06 / 4.14, Qwen3-8B (4096) 6.30 / 6.24 (docs/decode.md).
inline constexpr int64_t kFusedAddNormMaxM = 2048;

// A decode step's o or down projection and the residual add + RMSNorm after it in one GEMV launch (gemv.h's epilogue):
// returns {residual + x W^T, norm_weight * RMSNorm(that)} as add_rms_norm(residual, linear_decode(x, weight), ...)
// would, without the kernel boundary between them. done: an int32 tensor of one element on x's device, 0, left 0;
// no two launches that share it may overlap (the model's steps run on one stream).
bool gemv_add_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& residual,
                                 const torch::Tensor& norm_weight, const torch::Tensor& done);
std::pair<torch::Tensor, torch::Tensor> linear_decode_add_rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                                   const torch::Tensor& residual,
                                                                   const torch::Tensor& norm_weight, double eps,
                                                                   const torch::Tensor& done);

// A decode step's fused q/k/v projection with the q and k RMSNorm + RoPE per head in the same launch (gemv.h's head
// epilogue): x [B, T, k], weight [(q_heads + 2 k_heads) head_dim, k] ([q | k | v] rows), q_weight and k_weight
// [head_dim], cos and sin float32 [T, head_dim]. Returns the projection [B, T, m] (v is its last rows) and q and k
// normed and roped, [B, T, heads, head_dim] each, as rms_norm_rope_qk (rms_norm.h) of the projection's q and k would.
// done: int32 on x's device with at least q_heads + k_heads elements (q_heads + 2 k_heads with a token store), all 0,
// left 0.
struct ProjectedQkv {
  torch::Tensor qkv, q_normed, q_roped, k_normed, k_roped;
};
// Optional: the token's roped k and its v also written into a dense KV cache in the same launch, as kv_token_store
// (kv_token_store.h) would write them after it: k_cache and v_cache [B, k_heads, capacity, head_dim] contiguous, x's
// dtype and device; position int64 [1] on x's device (the slot, read there; outside [0, capacity) nothing is
// written). One token per sequence (T 1). All three tensors or none.
struct QkvTokenStore {
  torch::Tensor k_cache, v_cache, position;
  bool requested() const { return k_cache.defined() || v_cache.defined() || position.defined(); }
};
bool gemv_qk_norm_rope_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& q_weight,
                                 const torch::Tensor& k_weight, const torch::Tensor& cos, const torch::Tensor& sin,
                                 int64_t q_heads, int64_t k_heads, const torch::Tensor& done,
                                 const QkvTokenStore& store = {});
ProjectedQkv linear_decode_qk_norm_rope(const torch::Tensor& x, const torch::Tensor& weight,
                                        const torch::Tensor& q_weight, const torch::Tensor& k_weight,
                                        const torch::Tensor& cos, const torch::Tensor& sin, int64_t q_heads,
                                        int64_t k_heads, double eps, const torch::Tensor& done,
                                        kernels::GemvLayout layout = kernels::GemvLayout::Auto,
                                        const QkvTokenStore& store = {});

// A decode step's MoE router projection with the routing (moe_router.h) in the same launch: x [N, H] (N at most 4),
// weight [E, H]. Returns (logits [N, E], expert int64 [N, top_k], routing weight [N, top_k] in x's dtype), as
// moe_route(linear_decode(x, weight), top_k, norm_topk_prob) would. done: as above, one element.
bool gemv_moe_route_supported(const torch::Tensor& x, const torch::Tensor& weight, int64_t top_k,
                              const torch::Tensor& done);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> linear_decode_moe_route(
    const torch::Tensor& x, const torch::Tensor& weight, int64_t top_k, bool norm_topk_prob, const torch::Tensor& done,
    kernels::GemvLayout layout = kernels::GemvLayout::Auto);

}  // namespace rtp::ops
