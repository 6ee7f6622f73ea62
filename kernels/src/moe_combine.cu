// moe_combine.h: one thread per 16-byte vector of a token's output row, the token from blockIdx.y; each slot's row
// gathered by its index. Reads N K H elements once and writes N H: bound by its reads.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "rtp/kernels/moe_combine.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kThreads) moe_combine_kernel(const MoeCombineParams p) {
  cuda_detail::pdl_wait_then_trigger();
  constexpr int kVec = 16 / sizeof(T);
  const int64_t v = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (v * kVec >= p.hidden) return;
  const T* rows = static_cast<const T*>(p.rows);
  for (int64_t n = blockIdx.y; n < p.tokens; n += gridDim.y) {
    float acc[kVec] = {};
    for (int64_t k = 0; k < p.slots_per_token; ++k) {
      const int64_t s = n * p.slots_per_token + k;
      const float w = p.weight[s];
      const uint4 r4 = *reinterpret_cast<const uint4*>(rows + p.slot_row[s] * p.row_stride + v * kVec);
      const T* r = reinterpret_cast<const T*>(&r4);
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += w * to_float(r[j]);
    }
    uint4 o4;
    T* o = reinterpret_cast<T*>(&o4);
#pragma unroll
    for (int j = 0; j < kVec; ++j) o[j] = from_float<T>(acc[j]);
    *reinterpret_cast<uint4*>(static_cast<T*>(p.out) + n * p.hidden + v * kVec) = o4;
  }
}

template <typename T>
cudaError_t launch(const MoeCombineParams& p, cudaStream_t stream) {
  const int64_t vectors = p.hidden / (16 / sizeof(T));
  const dim3 grid(unsigned((vectors + kThreads - 1) / kThreads), unsigned(std::min<int64_t>(p.tokens, 65535)));
  return cuda_detail::launch_k(moe_combine_kernel<T>, grid, dim3(kThreads), 0, stream,
                               cuda_detail::programmatic_launch_available(), p);
}

}  // namespace

cudaError_t moe_combine_cuda(const MoeCombineParams& p, cudaStream_t stream) {
  if (*check_moe_combine_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
