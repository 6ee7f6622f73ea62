#pragma once
// Torch-facing fused RMSNorm (+ RoPE) (rtp/kernels/norm_rope.h): one kernel where the eager ops launch eight (norm)
// and fourteen (norm and RoPE of q or k). The model uses it on GPUs; the CPU keeps the eager ops, whose results are
// Hugging Face's to the last bit.
#include <torch/types.h>

#include <tuple>
#include <utility>

namespace rtp::ops {

// Whether the fused kernels take x with this weight: a CUDA build, CUDA tensors of one dtype (bf16 or float32), x
// contiguous, and no gradient to flow through (the kernels have no backward). (On the CPU the float32 reference runs
// when called directly.)
bool fused_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [..., dim] -> weight * round(x * rsqrt(mean(x^2) + eps)), x's dtype.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// (x + delta, rms_norm(x + delta)) with the sum rounded to x's dtype as an eager add leaves it: a residual add and the
// norm after it in one kernel. x and delta contiguous, same shape, dtype and device; fused_rms_norm_supported(x,
// weight) holds for both. On the CPU (float32) the double-arithmetic reference.
std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                                     const torch::Tensor& weight, double eps);

// Whether rms_norm_rope takes x with this weight: as above, but x may also be a [B, T, H, dim] view whose tokens are
// evenly spaced rows of H x dim contiguous elements (q or k narrowed out of a fused projection), read in place; no
// gradient to flow through.
bool fused_rms_norm_rope_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [B, T, H, dim] -> (normed, normed with RoPE), both [B, T, H, dim] contiguous; cos/sin float32 [T, dim].
std::pair<torch::Tensor, torch::Tensor> rms_norm_rope(const torch::Tensor& x, const torch::Tensor& weight,
                                                      const torch::Tensor& cos, const torch::Tensor& sin, double eps);

// rms_norm_rope of a layer's q and k (each with its own weight, both supported as above) in one launch on a GPU:
// (q normed, q with RoPE, k normed, k with RoPE).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> rms_norm_rope_qk(
    const torch::Tensor& q, const torch::Tensor& q_weight, const torch::Tensor& k, const torch::Tensor& k_weight,
    const torch::Tensor& cos, const torch::Tensor& sin, double eps);

}  // namespace rtp::ops
