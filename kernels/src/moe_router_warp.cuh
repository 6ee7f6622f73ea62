#pragma once
// One token's MoE routing by one warp (moe_router.h's semantics), shared by the router kernel and the GEMV's routing
// epilogue (gemv.h) so that both give the same bits: the token's probabilities in the lanes' registers (expert e in
// lane e % 32, slot e / 32), the top-k by k rounds of a warp arg-max.
#include "cuda_common.cuh"

namespace rtp::kernels::cuda_detail {

// logit(e): expert e's logit as float32, e < E. kSlots >= ceil(E / 32). Every lane of the warp calls it; lanes s < K
// write slot s of expert[] and weight[].
template <typename T, int kSlots, typename Logit>
__device__ __forceinline__ void route_token_in_warp(Logit logit, int E, int K, bool norm_topk_prob, int64_t* expert,
                                                    T* weight) {
  const int lane = threadIdx.x & 31;
  float v[kSlots];
  float mx = -INFINITY;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int e = s * 32 + lane;
    v[s] = e < E ? logit(e) : -INFINITY;
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
  // Top-k: each round the warp's largest probability, ties to the lower expert id; its owner marks it taken. A
  // probability p >= 0 orders as its float bits do, so a round is two warp reductions on integers (redux.sync, sm_80):
  // the largest key (the bits + 1; 0 for taken and padding), then the lowest expert id holding it. Five shuffle rounds
  // of value and id pairs did the same in a chain twice as long.
  float kept_p = 0.f;  // lane s < K keeps slot s's probability
  int kept_e = 0;
  float sum = 0.f;
  for (int k = 0; k < K; ++k) {
    unsigned key = 0u, key_e = 0xffffffffu;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {  // slots in ascending expert order: a strict > keeps the lower id on ties
      const unsigned ks = v[s] >= 0.f ? __float_as_uint(v[s]) + 1u : 0u;
      if (ks > key) key = ks, key_e = unsigned(s * 32 + lane);
    }
    const unsigned best_key = __reduce_max_sync(0xffffffffu, key);
    const int best_e = int(__reduce_min_sync(0xffffffffu, key == best_key ? key_e : 0xffffffffu));
    const float best = __uint_as_float(best_key - 1u);
    if ((best_e & 31) == lane) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s)
        if (s == (best_e >> 5)) v[s] = -2.f;
    }
    if (lane == k) kept_p = best, kept_e = best_e;
    sum += best;  // the slots in order, as a sequential sum over the kept probabilities
  }
  if (lane < K) {
    expert[lane] = kept_e;
    weight[lane] = from_float<T>(norm_topk_prob ? kept_p / sum : kept_p);
  }
}

}  // namespace rtp::kernels::cuda_detail
