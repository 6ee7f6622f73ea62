// silu(gate) * up (swiglu.h): 16-byte vectors of a row per thread where the rows allow them, else one thread per
// output element, grid-stride; bound by its reads.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "rtp/kernels/swiglu.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_kernel(const SwiGluParams p) {
  cuda_detail::pdl_wait_then_trigger();
  const T* gate = static_cast<const T*>(p.gate);
  const T* up = static_cast<const T*>(p.up);
  T* out = static_cast<T*>(p.out);
  const int64_t n = p.rows * p.inner;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads) {
    const int64_t r = e / p.inner, i = e - r * p.inner;
    const float g = to_float(gate[r * p.in_row_stride + i]);
    // Rounded after silu, as the eager silu kernel stores its result in the element type.
    const float s = to_float(from_float<T>(g / (1.f + expf(-g))));
    out[e] = from_float<T>(s * to_float(up[r * p.in_row_stride + i]));
  }
}

// 16-byte vectors (8 bf16 or 4 float) of one row per thread, the row from blockIdx.y: a prefill's thousands of rows
// were latency-bound in the element kernel above (a 64-bit division per element, 2-byte loads; 61 us for 4096 x 3072
// on an H100 where the bytes take some 25). The same arithmetic per element, so the same bits.
template <typename T>
__global__ void __launch_bounds__(kThreads) swiglu_vector_kernel(const SwiGluParams p) {
  cuda_detail::pdl_wait_then_trigger();
  constexpr int kVec = 16 / sizeof(T);
  const int64_t v = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  if (v * kVec >= p.inner) return;
  for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    const uint4 g4 = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.gate) + r * p.in_row_stride + v * kVec);
    const uint4 u4 = *reinterpret_cast<const uint4*>(static_cast<const T*>(p.up) + r * p.in_row_stride + v * kVec);
    const T* g = reinterpret_cast<const T*>(&g4);
    const T* u = reinterpret_cast<const T*>(&u4);
    uint4 o4;
    T* o = reinterpret_cast<T*>(&o4);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const float x = to_float(g[j]);
      o[j] = from_float<T>(to_float(from_float<T>(x / (1.f + expf(-x)))) * to_float(u[j]));
    }
    *reinterpret_cast<uint4*>(static_cast<T*>(p.out) + r * p.inner + v * kVec) = o4;
  }
}

template <typename T>
bool vectors_apply(const SwiGluParams& p) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return p.inner % kVec == 0 && p.in_row_stride % kVec == 0 && aligned(p.gate) && aligned(p.up) && aligned(p.out);
}

template <typename T>
cudaError_t launch(const SwiGluParams& p, cudaStream_t stream) {
  const bool pdl = cuda_detail::programmatic_launch_available();
  if (vectors_apply<T>(p)) {
    const int64_t vectors = p.inner / (16 / sizeof(T));
    const dim3 grid(unsigned((vectors + kThreads - 1) / kThreads), unsigned(std::min<int64_t>(p.rows, 65535)));
    return cuda_detail::launch_k(swiglu_vector_kernel<T>, grid, dim3(kThreads), 0, stream, pdl, p);
  }
  const int64_t n = p.rows * p.inner;
  const unsigned blocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  return cuda_detail::launch_k(swiglu_kernel<T>, dim3(blocks), dim3(kThreads), 0, stream, pdl, p);
}

}  // namespace

cudaError_t swiglu_cuda(const SwiGluParams& p, cudaStream_t stream) {
  if (*check_swiglu_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
