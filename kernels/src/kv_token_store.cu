// kv_token_store.h: one warp per (row, k or v), element-wise coalesced copies; a launch's worth of latency, not of
// bandwidth.
#include "cuda_common.cuh"
#include "rtp/kernels/kv_token_store.h"

namespace rtp::kernels {

namespace {

using cuda_detail::launch_k;
using cuda_detail::pdl_wait_then_trigger;
using cuda_detail::programmatic_launch_available;

constexpr int kWarps = 4;

template <typename U>  // an unsigned type of the element's size: bytes copied as they are
__global__ void __launch_bounds__(kWarps * 32) kv_token_store_kernel(const KvTokenStoreParams p) {
  pdl_wait_then_trigger();
  const int64_t task = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t rows = p.batch * p.heads;
  if (task >= 2 * rows) return;
  const int64_t pos = *p.position;
  if (pos < 0 || pos >= p.capacity) return;
  const bool is_v = task >= rows;
  const int64_t r = is_v ? task - rows : task, b = r / p.heads, h = r % p.heads;
  const U* src = static_cast<const U*>(is_v ? p.v : p.k) +
                 (is_v ? b * p.v_batch_stride + h * p.v_head_stride : b * p.k_batch_stride + h * p.k_head_stride);
  U* dst = static_cast<U*>(is_v ? p.v_cache : p.k_cache) + (r * p.capacity + pos) * p.head_dim;
  for (int64_t d = threadIdx.x & 31; d < p.head_dim; d += 32) dst[d] = src[d];
}

}  // namespace

cudaError_t kv_token_store_cuda(const KvTokenStoreParams& p, cudaStream_t stream) {
  if (*check_kv_token_store_params(p)) return cudaErrorInvalidValue;
  const unsigned blocks = unsigned((2 * p.batch * p.heads + kWarps - 1) / kWarps);
  return launch_k(p.element_bytes == 2 ? kv_token_store_kernel<unsigned short> : kv_token_store_kernel<unsigned int>,
                  dim3(blocks), dim3(kWarps * 32), 0, stream, programmatic_launch_available(), p);
}

}  // namespace rtp::kernels
