// attention_merge.h: one thread per 16-byte vector of a row; the row's two log-sum-exps read by each of its threads
// (the same cache line). Reads a and b once and writes out once: bound by memory.
#include <cuda_bf16.h>

#include <cstdint>

#include "cuda_common.cuh"
#include "rtp/kernels/attention_merge.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_merge_kernel(const AttentionMergeParams p) {
  cuda_detail::pdl_wait_then_trigger();
  constexpr int kVec = 16 / sizeof(T);
  const int64_t vectors_per_row = p.head_dim / kVec;
  const int64_t v = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const int64_t row = v / vectors_per_row, col = (v % vectors_per_row) * kVec;
  if (row >= p.batch * p.heads * p.tokens) return;
  const int64_t t = row % p.tokens, h = (row / p.tokens) % p.heads, i = row / (p.tokens * p.heads);
  const auto at = [&](const int64_t* s) { return i * s[0] + h * s[1] + t * s[2]; };
  const float la = p.lse_a[at(p.lse_a_stride)], lb = p.lse_b[at(p.lse_b_stride)];
  const float s = 1.f / (1.f + __expf(lb - la));
  const uint4 a4 = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.a) + at(p.a_stride) + col);
  const uint4 b4 = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.b) + at(p.b_stride) + col);
  const T* a = reinterpret_cast<const T*>(&a4);
  const T* b = reinterpret_cast<const T*>(&b4);
  uint4 o4;
  T* o = reinterpret_cast<T*>(&o4);
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const float bj = to_float(b[j]);
    o[j] = from_float<T>(fmaf(s, to_float(a[j]) - bj, bj));
  }
  *reinterpret_cast<uint4*>(static_cast<T*>(p.out) + at(p.out_stride) + col) = o4;
}

template <typename T>
cudaError_t launch(const AttentionMergeParams& p, cudaStream_t stream) {
  const int64_t vectors = p.batch * p.heads * p.tokens * (p.head_dim / (16 / int64_t(sizeof(T))));
  const dim3 grid(unsigned((vectors + kThreads - 1) / kThreads));
  return cuda_detail::launch_k(attention_merge_kernel<T>, grid, dim3(kThreads), 0, stream,
                               cuda_detail::programmatic_launch_available(), p);
}

}  // namespace

cudaError_t attention_merge_cuda(const AttentionMergeParams& p, cudaStream_t stream) {
  if (*check_attention_merge_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
