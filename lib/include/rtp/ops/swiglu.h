#pragma once
// Torch-facing SwiGLU activation (rtp/kernels/swiglu.h): silu(gate) * up in one kernel on a GPU.
#include <torch/types.h>

namespace rtp::ops {

// Whether swiglu runs fused for these tensors: a CUDA build, CUDA tensors of one shape, dtype (bf16 or float32) and
// device, each a stack of rows with unit element stride and one common row stride (the two halves of a fused
// gate/up projection's output qualify, read in place), and no gradient to flow through (the kernel has no backward).
bool fused_swiglu_supported(const torch::Tensor& gate, const torch::Tensor& up);

// silu(gate) * up, contiguous, gate's shape and dtype. Fused on a GPU where supported; otherwise the eager ops.
torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace rtp::ops
