// silu(gate) * up (swiglu.h): one thread per output element, grid-stride; bound by its reads, which a decode step's
// MLP makes a few microseconds at most.
#include <cuda_bf16.h>

#include <algorithm>

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

}  // namespace

cudaError_t swiglu_cuda(const SwiGluParams& p, cudaStream_t stream) {
  if (*check_swiglu_params(p, true)) return cudaErrorInvalidValue;
  const int64_t n = p.rows * p.inner;
  const unsigned blocks = unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  const bool pdl = cuda_detail::programmatic_launch_available();
  if (p.dtype == DType::BF16)
    return cuda_detail::launch_k(swiglu_kernel<__nv_bfloat16>, dim3(blocks), dim3(kThreads), 0, stream, pdl, p);
  return cuda_detail::launch_k(swiglu_kernel<float>, dim3(blocks), dim3(kThreads), 0, stream, pdl, p);
}

}  // namespace rtp::kernels
