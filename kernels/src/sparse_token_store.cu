// One decoded token's cache writes (sparse_token_store.h): one warp per task, tasks numbered [k/v rows of each KV
// head | index keys (retrieval slot, i) | index queries (retrieval slot, j, i)], four warps per block. Every task
// is a row copy or one dot product of head_dim; the launch is a few microseconds of latency, not of bandwidth.
#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "rtp/kernels/sparse_token_store.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kWarps = 4;

template <typename T>
__device__ __forceinline__ float warp_dot(const T* a, const T* b, int D, int lane) {
  float s = 0.f;
  for (int d = lane; d < D; d += 32) s = fmaf(to_float(a[d]), to_float(b[d]), s);
  return warp_sum(s);
}

template <typename T, typename TI>
__global__ void __launch_bounds__(kWarps * 32) sparse_token_store_kernel(const SparseTokenStoreParams p) {
  cuda_detail::pdl_wait_then_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int D = p.head_dim, I = p.index_dim, G = p.group_size, H = p.kv_heads;
  int n_ret = 0;
  for (int g = 0; g < H; ++g) n_ret += p.retrieval_slot_of[g] >= 0;
  const auto head_of_slot = [&](int r) {
    int g = 0;
    while (p.retrieval_slot_of[g] != r) ++g;
    return g;
  };
  const int64_t pos = *p.position;
  if (task < H) {
    const int g = int(task);
    int64_t row;
    T *kd, *vd;
    if (p.streaming_slot_of[g] >= 0) {
      const int64_t slot = *p.ring_slot;
      if (slot < 0 || slot >= p.ring_capacity) return;  // the host checks it; never write outside the ring
      row = p.streaming_slot_of[g] * p.ring_capacity + slot;
      kd = static_cast<T*>(p.ring_k), vd = static_cast<T*>(p.ring_v);
    } else {
      if (pos < 0 || pos >= p.full_capacity) return;
      row = p.retrieval_slot_of[g] * p.full_capacity + pos;
      kd = static_cast<T*>(p.full_k), vd = static_cast<T*>(p.full_v);
    }
    const T* ks = static_cast<const T*>(p.k) + g * p.k_head_stride;
    const T* vs = static_cast<const T*>(p.v) + g * p.v_head_stride;
    for (int d = lane; d < D; d += 32) kd[row * D + d] = ks[d], vd[row * D + d] = vs[d];
    return;
  }
  int64_t t = task - H;
  if (t < int64_t(n_ret) * I) {
    if (pos < 0 || pos >= p.full_capacity) return;
    const int r = int(t / I), i = int(t % I), g = head_of_slot(r);
    const T* w = static_cast<const T*>(p.index_k_weight) + (int64_t(r) * I + i) * D;
    const T* src = static_cast<const T*>(p.index_k_src) + g * p.index_k_src_head_stride;
    const float s = warp_dot(w, src, D, lane);
    if (lane == 0) static_cast<TI*>(p.index_keys)[(r * p.full_capacity + pos) * I + i] = from_float<TI>(s);
    return;
  }
  t -= int64_t(n_ret) * I;
  if (t < int64_t(n_ret) * G * I) {
    const int rj = int(t / I), i = int(t % I), r = rj / G, j = rj % G, g = head_of_slot(r);
    const T* w = static_cast<const T*>(p.index_q_weight) + (int64_t(rj) * I + i) * D;
    const T* src = static_cast<const T*>(p.index_q_src) + (int64_t(g) * G + j) * p.index_q_src_head_stride;
    const float s = warp_dot(w, src, D, lane);
    if (lane == 0) static_cast<T*>(p.index_q_out)[int64_t(rj) * I + i] = from_float<T>(s);
  }
}

template <typename T, typename TI>
cudaError_t launch(const SparseTokenStoreParams& p, cudaStream_t stream) {
  int n_ret = 0;
  for (int g = 0; g < p.kv_heads; ++g) n_ret += p.retrieval_slot_of[g] >= 0;
  const int64_t tasks = p.kv_heads + int64_t(n_ret) * p.index_dim * (1 + p.group_size);
  const unsigned blocks = unsigned((tasks + kWarps - 1) / kWarps);
  return cuda_detail::launch_k(sparse_token_store_kernel<T, TI>, dim3(blocks), dim3(kWarps * 32), 0, stream,
                               cuda_detail::programmatic_launch_available(), p);
}

}  // namespace

cudaError_t sparse_token_store_cuda(const SparseTokenStoreParams& p, cudaStream_t stream) {
  if (*check_sparse_token_store_params(p, true)) return cudaErrorInvalidValue;
  if (p.dtype == DType::BF16) {
    return p.index_dtype == DType::BF16 ? launch<__nv_bfloat16, __nv_bfloat16>(p, stream)
                                        : launch<__nv_bfloat16, float>(p, stream);
  }
  return p.index_dtype == DType::BF16 ? launch<float, __nv_bfloat16>(p, stream) : launch<float, float>(p, stream);
}

}  // namespace rtp::kernels
