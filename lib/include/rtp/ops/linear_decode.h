#pragma once
// Torch-facing projection of a decode step's few tokens (rtp/kernels/gemv.h): x W^T without bias, by the GEMV kernel
// on a GPU for up to kernels::kGemvMaxRows rows, at::linear otherwise.
#include <torch/types.h>

#include <utility>

#include "rtp/kernels/gemv_layout.h"

namespace rtp::ops {

// Whether linear_decode takes the kernel: a CUDA build; x [..., k] on a GPU with at most 4 rows, unit element stride
// and evenly spaced rows; weight [m, k] contiguous of x's dtype (bf16 or float32) and device; no gradient wanted.
bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [..., k] -> [..., m] in x's dtype: the kernel wherever gemv_supported, its warps laid out as `layout` says.
torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight,
                            kernels::GemvLayout layout = kernels::GemvLayout::Auto);

// The ratio the decode step uses: measured with the step's kernels chained by programmatic launch (H100, 2026-12-05,
// docs/decode.md "GEMV or cuBLAS under programmatic launch"): the fused q/k/v weights (m/k 1.5-4 on Qwen3) tie or gain
// on the GEMV (Qwen3-30B-A3B at 32K: 5.33 -> 5.24 ms per token), the fused gate/up (m/k 6) loses 3-5% there, so it
// stays with cuBLAS; o, down and router (k >= m) were 1.1-4x faster on the GEMV before.
inline constexpr int64_t kDecodeGemvMaxRatio = 4;

// The model's choice per weight [m, k]: the GEMV kernel where m <= max_ratio * k, cuBLAS elsewhere.
bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio = kDecodeGemvMaxRatio);

// linear_decode where gemv_preferred(weight, max_ratio), at::linear elsewhere.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio = kDecodeGemvMaxRatio);

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

}  // namespace rtp::ops
