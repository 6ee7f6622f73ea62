#pragma once
// RMSNorm of rows, optionally followed by rotary position embedding, in one pass: the work each decoder layer does
// four times (input, q, k and post-attention norms) and, for q and k, twice more (RoPE), which eagerly is some 44
// small kernels per layer and in a one-token decode step costs more than the layer's weight reads.
//
// Semantics (Hugging Face's order of operations; bf16 rounds where the eager libtorch ops do):
//   r = rsqrt(mean_i x_i^2 + eps)      (float32)
//   out_i = weight_i * round(x_i * r)
// With RoPE (rows ordered [B, T, H], `dim` even, half = dim / 2, t the row's position in T, c/s the tables rounded
// to the element type):
//   rope_i = round(out_i c_ti) + round(-out_{i+half} s_ti)        i < half
//   rope_i = round(out_i c_ti) + round(out_{i-half} s_ti)         i >= half
// With a residual (no RoPE): the row first becomes round(x_i + residual_i), written to sum_out, and that is normalised:
// a decoder layer's residual add and the next norm in one pass.
// CPU reference: float32 in and out, double arithmetic, no intermediate rounding.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct RmsNormParams {
  const void* x = nullptr;       // [rows, dim]: rows of a token contiguous, tokens x_token_stride apart
  const void* weight = nullptr;  // [dim]
  void* out = nullptr;           // [rows, dim]
  int64_t rows = 0, dim = 0;
  float eps = 1e-6f;
  DType dtype = DType::F32;
  // RoPE, when cos and sin are given: float32 tables [seq_len, dim]; rows = batch x seq_len x heads.
  const float* cos = nullptr;
  const float* sin = nullptr;
  void* rope_out = nullptr;  // [rows, dim]
  int64_t heads = 1, seq_len = 1;
  // Elements from one token's first row of x to the next token's, rows grouped per token as [heads, dim]; 0: heads x
  // dim (x contiguous). Lets q and k be read in place from a fused q/k/v projection. Outputs are contiguous.
  int64_t x_token_stride = 0;
  // Residual add first, when given (x contiguous, no RoPE): residual [rows, dim] in, sum_out [rows, dim] out.
  const void* residual = nullptr;
  void* sum_out = nullptr;
};

const char* check_rms_norm_params(const RmsNormParams& p, bool cuda);
void rms_norm_cpu(const RmsNormParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t rms_norm_cuda(const RmsNormParams& p, cudaStream_t stream);
// Two norms in one launch (a layer's q and k): both checked as above, one dtype.
cudaError_t rms_norm_pair_cuda(const RmsNormParams& a, const RmsNormParams& b, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
