#pragma once
// y = x W^T for a few rows of x (the tokens of a decode step): out[n, m] = sum_k x[n, k] W[m, k], float32 sums rounded
// once to the element type. For long reductions (k >= m: o, down, router projections) cuBLAS picks kernels that
// reach 8-81% of the copy bandwidth on an H200 (a Qwen3-0.6B o projection, 4 MB: 12.7 us; this kernel 3.1 us), so the
// model's one-token projections of that kind take this instead (ops::project): four warps per weight row, each a
// quarter of the row in 16-byte streaming loads, every token's dot from one read of the weights; for short, wide
// reductions (the gate/up), a warp per two whole rows instead (gemv_layout.h).
// CPU reference: float32, double sums (the epilogue's too).
#include <cstdint>

#include "rtp/kernels/gemv_layout.h"
#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

constexpr int kGemvMaxRows = 4;  // rows of x (tokens) one launch takes

struct GemvParams {
  const void* x = nullptr;       // [rows, k], rows x_row_stride elements apart
  const void* weight = nullptr;  // [m, k] contiguous
  void* out = nullptr;           // [rows, m] contiguous
  int64_t rows = 0, m = 0, k = 0, x_row_stride = 0;
  DType dtype = DType::F32;
  GemvLayout layout = GemvLayout::Auto;  // a speed choice: the sums are the same up to float32 rounding order
  // Optional epilogue, all five set or none: the residual add and RMSNorm that follow the o projection in a decoder
  // layer, in the same launch. Once every block has written its outputs, the last one to finish (counted in *done,
  // which must be 0 at the launch and is 0 again after it) computes per row sum = round(out + residual) and normed =
  // norm_weight * round(sum * rsqrt(mean(sum^2) + eps)), as rms_norm with a residual (norm_rope.h). A kernel
  // boundary less per layer; launches that share a `done` must not overlap (one stream).
  const void* residual = nullptr;     // [rows, m] contiguous
  const void* norm_weight = nullptr;  // [m]
  void* sum_out = nullptr;            // [rows, m] contiguous
  void* normed_out = nullptr;         // [rows, m] contiguous
  uint32_t* done = nullptr;
  float eps = 0.f;
  bool has_epilogue() const { return residual || norm_weight || sum_out || normed_out || done; }
};

const char* check_gemv_params(const GemvParams& p, bool cuda);
GemvLayout resolved_layout(const GemvParams& p);  // Auto made concrete
void gemv_cpu(const GemvParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t gemv_cuda(const GemvParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
