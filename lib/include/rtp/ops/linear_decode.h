#pragma once
// Torch-facing projection of a decode step's few tokens (rtp/kernels/gemv.h): x W^T without bias, by the GEMV kernel
// on a GPU for up to kernels::kGemvMaxRows rows, at::linear otherwise.
#include <torch/types.h>

namespace rtp::ops {

// Whether linear_decode takes the kernel: a CUDA build; x [..., k] on a GPU with at most 4 rows, unit element stride
// and evenly spaced rows; weight [m, k] contiguous of x's dtype (bf16 or float32) and device; no gradient wanted.
bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight);

// x [..., k] -> [..., m] in x's dtype: the kernel wherever gemv_supported.
torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight);

// The model's choice per weight [m, k]: the GEMV kernel where m <= max_ratio * k. The default, 1 (k >= m), is from
// one-token timings of both on an H200 before the decode step's kernels chained by programmatic launch
// (rtpurbo-bench-decode --breakdown, docs/decode.md): the GEMV for the o, down and router projections (1.1-4x faster
// than cuBLAS), cuBLAS where the output is longer (q/k/v and gate/up: cuBLAS up to 13% faster, its kernels reaching
// the copy bandwidth on those shapes). A larger ratio sends those to the GEMV too (docs/decode.md, Next 5).
bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio = 1);

// linear_decode where gemv_preferred(weight, max_ratio), at::linear elsewhere.
torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio = 1);

}  // namespace rtp::ops
