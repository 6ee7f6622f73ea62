#pragma once
// Torch-facing projection of a decode step's few tokens (rtp/kernels/gemv.h): x W^T without bias, by the GEMV kernel
// on a GPU for up to kernels::kGemvMaxRows rows, at::linear otherwise.
#include <torch/types.h>

namespace rtp::ops {

// Whether linear_decode takes the kernel: a CUDA build; x [..., k] on a GPU with at most 4 rows, unit element stride
// and evenly spaced rows; weight [m, k] contiguous of x's dtype (bf16 or float32) and device; no gradient wanted.
bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [..., k] -> [..., m] in x's dtype.
torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight);

}  // namespace rtp::ops
