// MoE block for a few tokens (moe_decode.h): two memory-bound kernels, one warp per weight row (per output row of the
// down projection, with the K slots' rows in flight together).
//   gate_up_act: per (token, slot) and intermediate row r, the gate and up dot products and silu(g) * u -> act
//   down_combine: per token and hidden row h, the K slots' down-projection dots, weighted and summed -> out
// Each weight byte is read once per (token, slot) that selected its expert, in 16-byte streaming loads that bypass
// L1 (they are not reused); the token's activations are reused by every warp and stay cached.
#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "rtp/kernels/moe_decode.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kWarpsPerBlock = 8;

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr int kPerVec = 4;
  static __device__ __forceinline__ float to_float(float v) { return v; }
  static __device__ __forceinline__ float round(float v) { return v; }
  static __device__ __forceinline__ float from_float(float v) { return v; }
  static __device__ __forceinline__ float dot(uint4 a, uint4 b) { return dot_16bytes<float>(a, b); }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kPerVec = 8;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float dot(uint4 a, uint4 b) { return dot_16bytes<__nv_bfloat16>(a, b); }
};

// row . x over `len` elements by one warp; every lane returns the sum. `vec`: len is a multiple of the vector
// width and both rows are 16-byte aligned.
template <typename T>
__device__ __forceinline__ float warp_dot(const T* __restrict__ row, const T* __restrict__ x, int64_t len, bool vec) {
  const int lane = threadIdx.x & 31;
  float acc = 0.f;
  if (vec) {
    const auto* r4 = reinterpret_cast<const uint4*>(row);
    const auto* x4 = reinterpret_cast<const uint4*>(x);
    const int64_t n4 = len / Elem<T>::kPerVec;
#pragma unroll 4
    for (int64_t i = lane; i < n4; i += 32) acc += Elem<T>::dot(__ldcs(r4 + i), __ldg(x4 + i));
  } else {
    for (int64_t i = lane; i < len; i += 32) acc += Elem<T>::to_float(row[i]) * Elem<T>::to_float(x[i]);
  }
  return warp_sum(acc);
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gate_up_act_kernel(const T* __restrict__ x, const int64_t* __restrict__ expert, const T* __restrict__ gate_up,
                       T* __restrict__ act, int64_t K, int64_t E, int64_t H, int64_t I, bool vec) {
  // The router's expert ids first (this kernel is launched by programmatic launch too), then the down pass may
  // launch: it reads the ids before its own wait, and waits for act before reading that.
  pdl_wait_then_trigger();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t slot = blockIdx.y;  // token * K + s
  if (r >= I) return;
  const int64_t e = expert[slot];
  if (e < 0 || e >= E) return;  // the down kernel skips the slot too
  const T* xr = x + (slot / K) * H;
  const T* ge = gate_up + e * 2 * I * H;
  float g, u;
  if (vec) {
    // Both rows in one loop: twice the loads in flight per warp (each sum still runs over i in the same order).
    const auto* g4 = reinterpret_cast<const uint4*>(ge + r * H);
    const auto* u4 = reinterpret_cast<const uint4*>(ge + (I + r) * H);
    const auto* x4 = reinterpret_cast<const uint4*>(xr);
    const int64_t n4 = H / Elem<T>::kPerVec;
    float ga = 0.f, ua = 0.f;
#pragma unroll 4
    for (int64_t i = threadIdx.x & 31; i < n4; i += 32) {
      const uint4 xv = __ldg(x4 + i);
      ga += Elem<T>::dot(__ldcs(g4 + i), xv);
      ua += Elem<T>::dot(__ldcs(u4 + i), xv);
    }
    g = warp_sum(ga), u = warp_sum(ua);
  } else {
    g = warp_dot(ge + r * H, xr, H, vec);
    u = warp_dot(ge + (I + r) * H, xr, H, vec);
  }
  if ((threadIdx.x & 31) == 0) {
    g = Elem<T>::round(g);
    u = Elem<T>::round(u);
    const float silu = Elem<T>::round(g / (1.f + expf(-g)));
    act[slot * I + r] = Elem<T>::from_float(silu * u);
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    down_combine_kernel(const T* __restrict__ act, const int64_t* __restrict__ expert, const T* __restrict__ weight,
                        const T* __restrict__ down, T* __restrict__ out, int64_t K, int64_t E, int64_t H, int64_t I,
                        bool vec) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t n = blockIdx.y;
  pdl_wait();  // act comes from gate_up_act_kernel
  if (h >= H) return;
  float acc = 0.f;
  for (int64_t s = 0; s < K; ++s) {
    const int64_t slot = n * K + s, e = expert[slot];
    if (e < 0 || e >= E) continue;
    const float y = Elem<T>::round(warp_dot(down + (e * H + h) * I, act + slot * I, I, vec));
    acc += Elem<T>::round(Elem<T>::to_float(weight[slot]) * y);
  }
  if ((threadIdx.x & 31) == 0) out[n * H + h] = Elem<T>::from_float(acc);
}

// down_combine with the K slots' dot products in flight together (K <= kMaxParallelSlots, vector path): one slot at
// a time, a warp waited for each slot's loads before issuing the next slot's, and with one warp per hidden row there
// are too few warps to hide that. Same sums in the same order as down_combine_kernel, so the same result.
constexpr int kMaxParallelSlots = 8;

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    down_combine_parallel_slots_kernel(const T* __restrict__ act, const int64_t* __restrict__ expert,
                                       const T* __restrict__ weight, const T* __restrict__ down, T* __restrict__ out,
                                       int64_t K, int64_t E, int64_t H, int64_t I) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t n = blockIdx.y;
  if (h >= H) return;
  const int lane = threadIdx.x & 31;
  const int64_t n4 = I / Elem<T>::kPerVec;
  const uint4* rows[kMaxParallelSlots];
  const uint4* acts[kMaxParallelSlots];
  bool valid[kMaxParallelSlots];
  float part[kMaxParallelSlots];
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s) {
    const int64_t slot = n * K + s, e = s < K ? expert[slot] : -1;
    valid[s] = e >= 0 && e < E;
    rows[s] = reinterpret_cast<const uint4*>(down + (valid[s] ? (e * H + h) * I : 0));
    acts[s] = reinterpret_cast<const uint4*>(act + (s < K ? slot : 0) * I);
    part[s] = 0.f;
  }
  // The first step's weight rows do not depend on the gate/up pass: requested before the wait for act.
  uint4 first[kMaxParallelSlots] = {};
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s)
    if (valid[s] && lane < n4) first[s] = __ldcs(rows[s] + lane);
  pdl_wait();  // act comes from gate_up_act_kernel
  if (lane < n4) {
#pragma unroll
    for (int s = 0; s < kMaxParallelSlots; ++s)
      if (valid[s]) part[s] += Elem<T>::dot(first[s], __ldg(acts[s] + lane));
  }
  for (int64_t i = lane + 32; i < n4; i += 32) {
#pragma unroll
    for (int s = 0; s < kMaxParallelSlots; ++s)
      if (valid[s]) part[s] += Elem<T>::dot(__ldcs(rows[s] + i), __ldg(acts[s] + i));
  }
  float acc = 0.f;
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s) {
    const float y = Elem<T>::round(warp_sum(part[s]));
    if (valid[s]) acc += Elem<T>::round(Elem<T>::to_float(weight[n * K + s]) * y);
  }
  if (lane == 0) out[n * H + h] = Elem<T>::from_float(acc);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
cudaError_t launch(const MoeDecodeParams& p, cudaStream_t stream) {
  const int64_t N = p.tokens, K = p.top_k, E = p.experts, H = p.hidden, I = p.intermediate;
  const int per_vec = sizeof(T) == 2 ? 8 : 4;
  const bool vec_gu = H % per_vec == 0 && aligned16(p.gate_up) && aligned16(p.x);
  const bool vec_dn = I % per_vec == 0 && aligned16(p.down) && aligned16(p.act);
  // The down pass by programmatic launch (Hopper on): its blocks start as the gate/up pass ends and request their
  // first weight rows before they wait for act. H100, Qwen3-30B-A3B's experts (8 of 128), one call in a graph: 35.5 us
  // against 36.7-36.9 without (docs/decode.md). Prefetching the down rows into L2 from the gate/up pass was slower
  // (38.3-39.2 us): it took DRAM bandwidth from the gate/up reads.
  const bool pdl = current_device_cc_major() >= 9;
  const dim3 block(kWarpsPerBlock * 32);
  cudaError_t err = launch_k(gate_up_act_kernel<T>, dim3(unsigned((I + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(N * K)),
                             block, 0, stream, pdl, static_cast<const T*>(p.x), p.expert, static_cast<const T*>(p.gate_up),
                             static_cast<T*>(p.act), K, E, H, I, vec_gu);
  if (err != cudaSuccess) return err;
  const dim3 grid_dn(unsigned((H + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(N));
  if (vec_dn && K <= kMaxParallelSlots)
    return launch_k(down_combine_parallel_slots_kernel<T>, grid_dn, block, 0, stream, pdl,
                    static_cast<const T*>(p.act), p.expert, static_cast<const T*>(p.weight), static_cast<const T*>(p.down),
                    static_cast<T*>(p.out), K, E, H, I);
  return launch_k(down_combine_kernel<T>, grid_dn, block, 0, stream, pdl, static_cast<const T*>(p.act), p.expert,
                  static_cast<const T*>(p.weight), static_cast<const T*>(p.down), static_cast<T*>(p.out), K, E, H, I,
                  vec_dn);
}

}  // namespace

cudaError_t moe_decode_cuda(const MoeDecodeParams& p, cudaStream_t stream) {
  if (*check_moe_decode_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
