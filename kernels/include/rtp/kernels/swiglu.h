#pragma once
// The SwiGLU activation silu(gate) * up of rows, in one pass: eagerly two kernels per dense MLP (silu, then the
// product), each a launch of its own in a one-token decode step.
//
// Semantics (bf16 rounds where the eager libtorch ops do):
//   out_i = round(round(silu(gate_i)) * up_i),   silu(g) = g / (1 + exp(-g))
// gate and up are rows of `inner` elements, `in_row_stride` elements apart (both halves of a fused gate/up
// projection's output); out is contiguous [rows, inner].
// CPU reference: float32 in and out, double arithmetic, no intermediate rounding.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct SwiGluParams {
  const void* gate = nullptr;  // [rows, inner], rows in_row_stride apart
  const void* up = nullptr;    // [rows, inner], rows in_row_stride apart
  void* out = nullptr;         // [rows, inner]
  int64_t rows = 0, inner = 0, in_row_stride = 0;
  DType dtype = DType::F32;
};

const char* check_swiglu_params(const SwiGluParams& p, bool cuda);
void swiglu_cpu(const SwiGluParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t swiglu_cuda(const SwiGluParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
