#pragma once
// Warp specialisation on Hopper: moving registers between warpgroups (setmaxnreg) and the named barriers that
// order warpgroups without stopping the whole block. sm_90a device code only (under RTP_HAVE_WGMMA).
#include <cstdint>

#include "wgmma.cuh"

namespace rtp::kernels::cuda_detail {
#ifdef RTP_HAVE_WGMMA

// Every warp of the warpgroup must execute these; the counts are per thread, multiples of 8 in [24, 256].
template <int N>
__device__ __forceinline__ void warpgroup_release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void warpgroup_claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

// Named barrier `id` (1..15; 0 is __syncthreads) completing when `threads` threads have arrived; sync waits,
// arrive does not.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

#endif  // RTP_HAVE_WGMMA
}  // namespace rtp::kernels::cuda_detail
