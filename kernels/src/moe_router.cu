// The MoE router's softmax and top-k (moe_router.h): one warp per token, the token's probabilities in its lanes'
// registers (expert e in lane e % 32, slot e / 32); the top-k by k rounds of a warp arg-max.
#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "rtp/kernels/moe_router.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kWarps = 4;

// kSlots = ceil(experts / 32) rounded up to a power of two (4 for 128 experts): each top-k round scans only those.
template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32) moe_router_kernel(const MoeRouterParams p) {
  pdl_wait_then_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= p.tokens) return;
  const int E = int(p.experts), K = int(p.top_k);
  const T* l = static_cast<const T*>(p.logits) + n * E;
  float v[kSlots];
  float mx = -INFINITY;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int e = s * 32 + lane;
    v[s] = e < E ? to_float(l[e]) : -INFINITY;
    mx = fmaxf(mx, v[s]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float total = 0.f;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    v[s] = s * 32 + lane < E ? expf(v[s] - mx) : 0.f;
    total += v[s];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
  const float inv = 1.f / total;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) v[s] = s * 32 + lane < E ? v[s] * inv : -1.f;  // taken or padding: below any p
  // Top-k: each round the warp's largest probability, ties to the lower expert id; its owner marks it taken.
  float kept_p = 0.f;  // lane s < K keeps slot s's probability
  int kept_e = 0;
  float sum = 0.f;
  for (int k = 0; k < K; ++k) {
    float best = -1.f;
    int best_e = 0x7fffffff;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int e = s * 32 + lane;
      if (v[s] > best || (v[s] == best && e < best_e)) best = v[s], best_e = e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
      if (ob > best || (ob == best && oe < best_e)) best = ob, best_e = oe;
    }
    if ((best_e & 31) == lane) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s)
        if (s == (best_e >> 5)) v[s] = -2.f;
    }
    if (lane == k) kept_p = best, kept_e = best_e;
    sum += best;  // the slots in order, as a sequential sum over the kept probabilities
  }
  if (lane < K) {
    p.expert[n * K + lane] = kept_e;
    static_cast<T*>(p.weight)[n * K + lane] = from_float<T>(p.norm_topk_prob ? kept_p / sum : kept_p);
  }
}

template <typename T>
cudaError_t launch(const MoeRouterParams& p, cudaStream_t stream) {
  static_assert(kMoeRouterMaxExperts == 16 * 32, "the slot counts below cover up to 16 x 32 experts");
  const unsigned blocks = unsigned((p.tokens + kWarps - 1) / kWarps);
  auto kern = p.experts <= 32    ? moe_router_kernel<T, 1>
              : p.experts <= 64  ? moe_router_kernel<T, 2>
              : p.experts <= 128 ? moe_router_kernel<T, 4>
              : p.experts <= 256 ? moe_router_kernel<T, 8>
                                 : moe_router_kernel<T, 16>;
  return launch_k(kern, dim3(blocks), dim3(kWarps * 32), 0, stream, programmatic_launch_available(), p);
}

}  // namespace

cudaError_t moe_router_cuda(const MoeRouterParams& p, cudaStream_t stream) {
  if (*check_moe_router_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
