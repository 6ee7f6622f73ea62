#pragma once
// Torch-facing launcher of rtp/kernels/sparse_token_store.h: the sparse cache fills the parameters (pointers into
// its buffers and the step's q/k/v) and this checks them and runs the kernel on the current CUDA stream, or the CPU
// reference for host pointers.
#include <torch/types.h>

#include "rtp/kernels/sparse_token_store.h"

namespace rtp::ops {

// Whether the CUDA kernel can run: a CUDA build, a CUDA device, and the model's dtype bf16 or float32.
bool sparse_token_store_supported(torch::Device device, torch::ScalarType dtype);

// Runs the store for p on `device` (the CPU: the float32 reference). A bad parameter is an error naming it; on the CPU
// (host values) so is a position outside [0, full_capacity) or a ring slot outside [0, ring_capacity).
void sparse_token_store(const kernels::SparseTokenStoreParams& p, torch::Device device);

}  // namespace rtp::ops
