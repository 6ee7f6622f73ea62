#pragma once
// Two attention outputs over disjoint key sets as one: a prompt chunk attended by parts (rtp/model/attention_parts.h).
// Eagerly four passes over the outputs (two float32 conversions, a lerp, a cast back); here one read of each and one
// write.
//
// Semantics, for every row (i, h, t) of [B, H, T, D]:
//   s = sigmoid(lse_a[i, h, t] - lse_b[i, h, t])                     (a's share of the whole softmax sum)
//   out[i, h, t, :] = round( s * a[i, h, t, :] + (1 - s) * b[i, h, t, :] )
// in float32 arithmetic (double in the CPU reference), one rounding to the element type. Tensors are strided in their
// first three dimensions (element (i, h, t, d) at i * stride[0] + h * stride[1] + t * stride[2] + d); D is contiguous.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct AttentionMergeParams {
  const void* a = nullptr;       // [B, H, T, D] in dtype
  const void* b = nullptr;       // [B, H, T, D] in dtype
  void* out = nullptr;           // [B, H, T, D] in dtype
  const float* lse_a = nullptr;  // [B, H, T]
  const float* lse_b = nullptr;  // [B, H, T]
  int64_t a_stride[3] = {}, b_stride[3] = {}, out_stride[3] = {}, lse_a_stride[3] = {}, lse_b_stride[3] = {};
  int64_t batch = 0, heads = 0, tokens = 0, head_dim = 0;
  DType dtype = DType::F32;
};

// cuda: the kernel moves 16-byte vectors, so head_dim and the row strides of a, b and out must be multiples of 16
// bytes and those tensors 16-byte aligned (attention_merge_cuda_takes).
const char* check_attention_merge_params(const AttentionMergeParams& p, bool cuda);
bool attention_merge_cuda_takes(const AttentionMergeParams& p);
void attention_merge_cpu(const AttentionMergeParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t attention_merge_cuda(const AttentionMergeParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
