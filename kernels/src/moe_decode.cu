// MoE block for a few tokens (moe_decode.h): two memory-bound kernels, one warp per weight row (per output row of the
// down projection, with the K slots' rows in flight together).
//   gate_up_act: per (token, slot) and intermediate row r, the gate and up dot products and silu(g) * u -> act
//   down_combine: per token and hidden row h, the K slots' down-projection dots, weighted and summed -> out
// Each weight byte is read once per (token, slot) that selected its expert, in 16-byte streaming loads that bypass
// L1 (they are not reused); the token's activations are reused by every warp and stay cached.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>

#include "cuda_common.cuh"
#include "last_block_add_norm.cuh"
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

// kRows consecutive intermediate rows per warp (MoeDecodeLaunchShape::gate_up_rows_per_warp): fewer, longer warps,
// with kRows times the loads in flight each. Every row's sums run over i in the same order for any kRows.
// One bf16 row per warp is held to 5 blocks per SM (48 registers, no spills; 56 unbounded, which fits 4): the
// kernel before the launch shapes took 46, and its 768 blocks of Qwen3-30B-A3B's 8 slots then span 1.16 waves of
// 132 SMs instead of 1.45. Elsewhere no bound (0): any bound made ptxas take all it allowed, and spill (sm_90a).
template <typename T, int kRows>
__device__ __forceinline__ void gate_up_rows(const T* __restrict__ x, const int64_t* __restrict__ expert,
                                             const T* __restrict__ gate_up, T* __restrict__ act, int64_t K, int64_t E,
                                             int64_t H, int64_t I, bool vec, int64_t slot, int64_t r0) {
  if (r0 >= I) return;
  const int64_t e = expert[slot];
  if (e < 0 || e >= E) return;  // the down pass skips the slot too
  const T* xr = x + (slot / K) * H;
  const T* ge = gate_up + e * 2 * I * H;
  float g[kRows], u[kRows];
  if (vec) {
    // A row's gate and up rows in one loop (and the warp's kRows rows): more loads in flight per warp. Rows past I
    // read row r0 again and are not written.
    const uint4* g4[kRows];
    const uint4* u4[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int64_t r = kRows == 1 || r0 + j < I ? r0 + j : r0;
      g4[j] = reinterpret_cast<const uint4*>(ge + r * H);
      u4[j] = reinterpret_cast<const uint4*>(ge + (I + r) * H);
    }
    const auto* x4 = reinterpret_cast<const uint4*>(xr);
    const int64_t n4 = H / Elem<T>::kPerVec;
    constexpr int kUnroll = kRows >= 4 ? 1 : 4 / kRows;  // about 8 weight loads in flight per lane for any kRows
    float ga[kRows] = {}, ua[kRows] = {};
#pragma unroll(kUnroll)
    for (int64_t i = threadIdx.x & 31; i < n4; i += 32) {
      const uint4 xv = __ldg(x4 + i);
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        ga[j] += Elem<T>::dot(__ldcs(g4[j] + i), xv);
        ua[j] += Elem<T>::dot(__ldcs(u4[j] + i), xv);
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) g[j] = warp_sum(ga[j]), u[j] = warp_sum(ua[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const int64_t r = kRows == 1 || r0 + j < I ? r0 + j : r0;
      g[j] = warp_dot(ge + r * H, xr, H, vec);
      u[j] = warp_dot(ge + (I + r) * H, xr, H, vec);
    }
  }
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      if (kRows > 1 && r0 + j >= I) break;
      const float gj = Elem<T>::round(g[j]), uj = Elem<T>::round(u[j]);
      const float silu = Elem<T>::round(gj / (1.f + expf(-gj)));
      act[slot * I + r0 + j] = Elem<T>::from_float(silu * uj);
    }
  }
}

// kRows consecutive intermediate rows per warp (MoeDecodeLaunchShape::gate_up_rows_per_warp): fewer, longer warps,
// with kRows times the loads in flight each. Every row's sums run over i in the same order for any kRows.
// One bf16 row per warp is held to 5 blocks per SM (48 registers, no spills; 56 unbounded, which fits 4): the
// kernel before the launch shapes took 46, and its 768 blocks of Qwen3-30B-A3B's 8 slots then span 1.16 waves of
// 132 SMs instead of 1.45. Elsewhere no bound (0): any bound made ptxas take all it allowed, and spill (sm_90a).
template <typename T, int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, kRows == 1 && sizeof(T) == 2 ? 5 : 0)
    gate_up_act_kernel(const T* __restrict__ x, const int64_t* __restrict__ expert, const T* __restrict__ gate_up,
                       T* __restrict__ act, int64_t K, int64_t E, int64_t H, int64_t I, bool vec) {
  // The router's expert ids first (this kernel is launched by programmatic launch too), then the down pass may
  // launch: it reads the ids before its own wait, and waits for act before reading that.
  pdl_wait_then_trigger();
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5)) * kRows;
  gate_up_rows<T, kRows>(x, expert, gate_up, act, K, E, H, I, vec, blockIdx.y, r0);
}

// The add + RMSNorm epilogue of the launch (MoeDecodeParams::has_add_norm), by its last block: every thread of
// every block calls it once its rows are written. pdl_wait before: the residual comes from earlier kernels.
template <typename T, int kThreads>
__device__ __forceinline__ void finish_block(const AddNormRows<T>& epi, uint32_t* done) {
  pdl_wait();
  if (last_to_finish(done, gridDim.x * gridDim.y)) add_rms_norm_rows<T, kThreads>(epi);
}

template <typename T, bool kAddNorm>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    down_combine_kernel(const T* __restrict__ act, const int64_t* __restrict__ expert, const T* __restrict__ weight,
                        const T* __restrict__ down, T* __restrict__ out, int64_t K, int64_t E, int64_t H, int64_t I,
                        bool vec, AddNormRows<T> epi, uint32_t* done) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t n = blockIdx.y;
  pdl_wait();  // act comes from gate_up_act_kernel
  if (h < H) {
    float acc = 0.f;
    for (int64_t s = 0; s < K; ++s) {
      const int64_t slot = n * K + s, e = expert[slot];
      if (e < 0 || e >= E) continue;
      const float y = Elem<T>::round(warp_dot(down + (e * H + h) * I, act + slot * I, I, vec));
      acc += Elem<T>::round(Elem<T>::to_float(weight[slot]) * y);
    }
    if ((threadIdx.x & 31) == 0) out[n * H + h] = Elem<T>::from_float(acc);
  }
  if constexpr (kAddNorm) finish_block<T, kWarpsPerBlock * 32>(epi, done);
}

// down_combine with the K slots' dot products in flight together (K <= kMaxParallelSlots, vector path): one slot at
// a time, a warp waited for each slot's loads before issuing the next slot's, and with one warp per hidden row there
// are too few warps to hide that. The first kAhead loads of every slot's row (32 lanes x 16 bytes each) do not depend
// on the gate/up pass and are requested before the wait for act (MoeDecodeLaunchShape::down_loads_ahead takes as many
// as cover the row). Same sums in the same order as down_combine_kernel, so the same result.
constexpr int kMaxParallelSlots = 8;
constexpr int kMaxLoadsAhead = 4;

// Hidden row h of token n: the K slots' dots, weighted and summed, by one warp. wait_for_act() returns token n's K act
// rows ([K, I], in global memory or, kActShared, in shared memory) once they are written; store: write the row (a
// warp past H computes row H - 1 again and does not, where every warp must reach the wait's barriers).
template <typename T, int kAhead, bool kActShared, class WaitForAct>
__device__ __forceinline__ void down_rows(const int64_t* __restrict__ expert, const T* __restrict__ weight,
                                          const T* __restrict__ down, T* __restrict__ out, int64_t K, int64_t E,
                                          int64_t H, int64_t I, int64_t h, int64_t n, bool store,
                                          WaitForAct wait_for_act) {
  const int lane = threadIdx.x & 31;
  const int64_t n4 = I / Elem<T>::kPerVec;
  const uint4* rows[kMaxParallelSlots];
  bool valid[kMaxParallelSlots];
  float part[kMaxParallelSlots];
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s) {
    const int64_t slot = n * K + s, e = s < K ? expert[slot] : -1;
    valid[s] = e >= 0 && e < E;
    rows[s] = reinterpret_cast<const uint4*>(down + (valid[s] ? (e * H + h) * I : 0));
    part[s] = 0.f;
  }
  uint4 ahead[kAhead][kMaxParallelSlots];
#pragma unroll
  for (int a = 0; a < kAhead; ++a)
#pragma unroll
    for (int s = 0; s < kMaxParallelSlots; ++s)
      ahead[a][s] = valid[s] && lane + 32 * a < n4 ? __ldcs(rows[s] + lane + 32 * a) : make_uint4(0, 0, 0, 0);
  const T* act_n = wait_for_act();
  const uint4* acts[kMaxParallelSlots];
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s) acts[s] = reinterpret_cast<const uint4*>(act_n + (s < K ? s : 0) * I);
  const auto act_at = [](const uint4* p) { return kActShared ? *p : __ldg(p); };
#pragma unroll
  for (int a = 0; a < kAhead; ++a) {
    if (lane + 32 * a < n4) {
#pragma unroll
      for (int s = 0; s < kMaxParallelSlots; ++s)
        if (valid[s]) part[s] += Elem<T>::dot(ahead[a][s], act_at(acts[s] + lane + 32 * a));
    }
  }
  for (int64_t i = lane + 32 * kAhead; i < n4; i += 32) {
#pragma unroll
    for (int s = 0; s < kMaxParallelSlots; ++s)
      if (valid[s]) part[s] += Elem<T>::dot(__ldcs(rows[s] + i), act_at(acts[s] + i));
  }
  float acc = 0.f;
#pragma unroll
  for (int s = 0; s < kMaxParallelSlots; ++s) {
    const float y = Elem<T>::round(warp_sum(part[s]));
    if (valid[s]) acc += Elem<T>::round(Elem<T>::to_float(weight[n * K + s]) * y);
  }
  if (lane == 0 && store) out[n * H + h] = Elem<T>::from_float(acc);
}

// With the epilogue (even an empty one after the count), ptxas took 143-149 registers where the plain kernel takes 125
// (bf16, 8 warps, 3 loads ahead): one block per SM instead of two, and Qwen3-30B-A3B's 256 down blocks in two waves.
// Bounded to the plain kernel's 2 blocks of 8 warps (4 of 4) where that kernel fits them (24 bytes spilled); not where
// it does not (4 loads ahead: 166).
template <int kWarps, int kAhead, bool kAddNorm>
constexpr int down_min_blocks() {
  return kAddNorm && kAhead <= 3 ? 16 / kWarps : 0;
}

template <typename T, int kWarps, int kAhead, bool kAddNorm>
__global__ void __launch_bounds__(kWarps * 32, down_min_blocks<kWarps, kAhead, kAddNorm>())
    down_combine_parallel_slots_kernel(const T* __restrict__ act, const int64_t* __restrict__ expert,
                                       const T* __restrict__ weight, const T* __restrict__ down, T* __restrict__ out,
                                       int64_t K, int64_t E, int64_t H, int64_t I,
                                       AddNormRows<T> epi, uint32_t* done) {
  const int64_t h = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t n = blockIdx.y;
  if (h < H)
    down_rows<T, kAhead, false>(expert, weight, down, out, K, E, H, I, h, n, true, [&] {
      pdl_wait();  // act comes from gate_up_act_kernel
      return act + n * K * I;
    });
  if constexpr (kAddNorm) finish_block<T, kWarps * 32>(epi, done);
}

// Both passes in one launch (MoeDecodeLaunchShape::one_launch). Work items in order: the gate/up pass's (slot-major,
// kRows x 8 intermediate rows each), then the down pass's (8 hidden rows of one token each); a down item waits until
// every gate/up item has finished. That is safe only where every block of the grid runs at once: a block waiting in a
// down item must never hold an SM that the block owning an unfinished gate/up item is waiting for. A cooperative
// launch guarantees it (or refuses the launch), and then a block's first item is its index (first_by_index) and its
// next ones come from a count. Where the cooperative launch is refused, every item, the first too, comes from the
// count: an item is then handed out only after every item before it, each to a running block, which is safe for any
// grid, but 384 blocks asking one address at once cost Qwen3-30B-A3B 3.7 us a layer on an H100 (docs/decode.md).
// Each block asks for its next item as it starts an item, so the count's latency hides behind the item. Its weight
// rows are requested before it waits, and the token's act rows are then staged in shared memory once per block (read
// through L2: other blocks wrote them during this launch).
// Counts in `done`: [0] blocks finished (the last block resets the others and runs the epilogue), [1] items handed
// out (beyond the grid's first items where those go by index), [2] gate/up items finished.
constexpr int kFinished = 0, kHandedOut = 1, kGateUpFinished = 2;

// The gate/up item's act rows, published after the block's barrier (cumulative through it, as last_to_finish).
__device__ __forceinline__ void add_release(uint32_t* p, uint32_t v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t load_acquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// A down item requests one weight vector a lane ahead of its wait: bounded to 3 blocks of 8 warps per SM (80
// registers), the gate/up items then have 24 warps an SM. With the rows' every vector ahead (2 blocks per SM, 128
// registers) the step was 3-4% slower (H100, docs/decode.md "Both MoE passes in one launch").
template <typename T, int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 3)
    experts_one_launch_kernel(const T* __restrict__ x, const int64_t* __restrict__ expert,
                              const T* __restrict__ weight, const T* __restrict__ gate_up, const T* __restrict__ down,
                              T* __restrict__ act, T* __restrict__ out, int64_t N, int64_t K, int64_t E, int64_t H,
                              int64_t I, AddNormRows<T> epi, uint32_t* counts, bool first_by_index) {
  extern __shared__ uint4 staged_act[];  // [K, I] of one token
  __shared__ uint32_t next_item;
  pdl_wait_then_trigger();  // x and the router's ids and weights come from the kernels before
  const int warp = threadIdx.x >> 5;
  const uint32_t gate_up_per_slot = uint32_t((I + kWarpsPerBlock * kRows - 1) / (kWarpsPerBlock * kRows));
  const uint32_t gate_up_items = uint32_t(N * K) * gate_up_per_slot;
  const uint32_t down_per_token = uint32_t((H + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const uint32_t items = gate_up_items + uint32_t(N) * down_per_token;
  bool gate_up_seen = false;  // the same in every thread of the block
  int64_t staged_token = -1;
  const auto wait_for_act = [&](int64_t n) {
    return [&, n]() -> const T* {
      if (!gate_up_seen) {
        if (threadIdx.x == 0)
          while (load_acquire(counts + kGateUpFinished) < gate_up_items) __nanosleep(64);
        gate_up_seen = true;
      }
      if (staged_token != n) {
        __syncthreads();  // the count seen (thread 0) before any thread reads act; the last token's rows read
        const int64_t vecs = K * I / Elem<T>::kPerVec;
        const auto* src = reinterpret_cast<const uint4*>(act + n * K * I);
        for (int64_t i = threadIdx.x; i < vecs; i += blockDim.x) staged_act[i] = __ldcg(src + i);
        __syncthreads();
        staged_token = n;
      }
      return reinterpret_cast<const T*>(staged_act);
    };
  };
  const uint32_t first_counted = first_by_index ? gridDim.x : 0u;  // items below it go by block index
  uint32_t item = blockIdx.x;
  if (!first_by_index) {
    if (threadIdx.x == 0) next_item = atomicAdd(counts + kHandedOut, 1u);
    __syncthreads();
    item = next_item;
    __syncthreads();  // every thread has read next_item before thread 0 writes the next
  }
  while (item < items) {
    if (threadIdx.x == 0) next_item = first_counted + atomicAdd(counts + kHandedOut, 1u);
    const bool is_gate_up = item < gate_up_items;
    if (is_gate_up) {
      const uint32_t slot = item / gate_up_per_slot;
      const int64_t r0 = (int64_t(item % gate_up_per_slot) * kWarpsPerBlock + warp) * kRows;
      gate_up_rows<T, kRows>(x, expert, gate_up, act, K, E, H, I, true, slot, r0);
    } else {
      const uint32_t d = item - gate_up_items;
      const int64_t n = d / down_per_token, h = int64_t(d % down_per_token) * kWarpsPerBlock + warp;
      down_rows<T, 1, true>(expert, weight, down, out, K, E, H, I, h < H ? h : H - 1, n, h < H,
                                 wait_for_act(n));
    }
    __syncthreads();  // next_item written; the item's outputs written by every warp
    if (is_gate_up && threadIdx.x == 0) add_release(counts + kGateUpFinished, 1u);
    item = next_item;
    __syncthreads();  // every thread has read next_item before thread 0 writes the next
  }
  if (last_to_finish(counts + kFinished, gridDim.x)) {
    // Every other block has finished its items and taken its last count.
    if (threadIdx.x == 0) counts[kHandedOut] = 0u, counts[kGateUpFinished] = 0u;
    if (epi.sum) add_rms_norm_rows<T, kWarpsPerBlock * 32>(epi);
  }
}

// Blocks of `kernel` resident on the current device at once (its SMs times blocks per SM), kept in blocks_of[device]
// (the kernel's own table: a hardware and compiled-kernel fact; 0: not asked yet). 0 if it cannot be read.
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, size_t smem, std::atomic<int> (&blocks_of)[kCachedDevices]) {
  int dev = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  const bool kept = dev >= 0 && dev < kCachedDevices;
  int blocks = kept ? blocks_of[dev].load(std::memory_order_relaxed) : 0;
  if (blocks > 0) return blocks;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess)
    return 0;
  blocks = sms * per_sm;
  if (kept) blocks_of[dev].store(blocks, std::memory_order_relaxed);
  return blocks;
}

// The smem argument of resident_blocks is the largest the one-launch kernel takes, so the count kept holds for every
// call: 32 KB, under the 48 KB a block may have without opting in with its static shared memory beside it.
constexpr size_t kMaxStagedAct = 32 * 1024;

// Devices where a cooperative launch was refused although the device takes them (under MPS with fewer SMs than the
// device has, say): the count form from then on, so that a refusal is met once, not on every call.
std::atomic<bool> cooperative_refused_on[kCachedDevices];
bool cooperative_launch_worth_trying() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || current_device_attribute<cudaDevAttrCooperativeLaunch>(0) == 0) return false;
  return dev >= kCachedDevices || !cooperative_refused_on[dev].load(std::memory_order_relaxed);
}
void remember_cooperative_refusal() {
  int dev = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < kCachedDevices)
    cooperative_refused_on[dev].store(true, std::memory_order_relaxed);
}

template <typename T>
cudaError_t launch_one(const MoeDecodeParams& p, const AddNormRows<T>& epi, cudaStream_t stream) {
  const int64_t N = p.tokens, K = p.top_k, E = p.experts, H = p.hidden, I = p.intermediate;
  const int rows = p.shape.gate_up_rows_per_warp;
  const auto kernel = rows == 2 ? experts_one_launch_kernel<T, 2> : experts_one_launch_kernel<T, 1>;
  const int threads = kWarpsPerBlock * 32;
  static std::atomic<int> resident_of[2][kCachedDevices];  // per kernel: [rows == 2]
  const int resident = resident_blocks(kernel, threads, kMaxStagedAct, resident_of[rows == 2]);
  if (resident <= 0) return cudaErrorInvalidConfiguration;
  const int64_t gate_up_items = N * K * ((I + kWarpsPerBlock * rows - 1) / (kWarpsPerBlock * rows));
  const dim3 grid(unsigned(std::min<int64_t>(gate_up_items, resident)));
  const size_t smem = size_t(K * I) * sizeof(T);
  const bool pdl = current_device_cc_major() >= 9;
  const auto launch = [&](bool cooperative) {
    // cooperative: every block resident, so the first items go by block index (first_by_index).
    return launch_with(kernel, grid, dim3(threads), smem, stream, pdl, cooperative, static_cast<const T*>(p.x),
                       p.expert, static_cast<const T*>(p.weight), static_cast<const T*>(p.gate_up),
                       static_cast<const T*>(p.down), static_cast<T*>(p.act), static_cast<T*>(p.out), N, K, E, H, I,
                       epi, p.done, cooperative);
  };
  if (!p.one_launch_by_count && cooperative_launch_worth_trying()) {
    if (launch(true) == cudaSuccess) return cudaSuccess;
    // A refusal is not a sticky error; the count form runs instead, from now on on this device. (Refused while a graph
    // is captured, the capture may be invalidated and fail with an error at its end; the next capture is fine.)
    (void)cudaGetLastError();
    remember_cooperative_refusal();
  }
  return launch(false);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, bool kAddNorm>
cudaError_t launch_down(const MoeDecodeParams& p, const AddNormRows<T>& epi, bool vec, bool pdl, cudaStream_t stream) {
  const int64_t N = p.tokens, K = p.top_k, E = p.experts, H = p.hidden, I = p.intermediate;
  const auto* act = static_cast<const T*>(p.act);
  const auto* weight = static_cast<const T*>(p.weight);
  const auto* down = static_cast<const T*>(p.down);
  auto* out = static_cast<T*>(p.out);
  if (vec && K <= kMaxParallelSlots) {
    const int64_t loads_per_lane = (I / Elem<T>::kPerVec + 31) / 32;
    const int ahead = p.shape.down_loads_ahead ? int(std::min<int64_t>(loads_per_lane, kMaxLoadsAhead)) : 1;
    const int warps = p.shape.down_warps_per_block;
    using Kernel = void (*)(const T*, const int64_t*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t,
                            AddNormRows<T>, uint32_t*);
    // [warps == 8][ahead - 1]
    const Kernel kernels[2][kMaxLoadsAhead] = {
        {down_combine_parallel_slots_kernel<T, 4, 1, kAddNorm>, down_combine_parallel_slots_kernel<T, 4, 2, kAddNorm>,
         down_combine_parallel_slots_kernel<T, 4, 3, kAddNorm>, down_combine_parallel_slots_kernel<T, 4, 4, kAddNorm>},
        {down_combine_parallel_slots_kernel<T, 8, 1, kAddNorm>, down_combine_parallel_slots_kernel<T, 8, 2, kAddNorm>,
         down_combine_parallel_slots_kernel<T, 8, 3, kAddNorm>, down_combine_parallel_slots_kernel<T, 8, 4, kAddNorm>}};
    const dim3 grid(unsigned((H + warps - 1) / warps), unsigned(N));
    return launch_k(kernels[warps == 8][ahead - 1], grid, dim3(warps * 32), 0, stream, pdl, act, p.expert, weight, down,
                    out, K, E, H, I, epi, p.done);
  }
  const dim3 grid(unsigned((H + kWarpsPerBlock - 1) / kWarpsPerBlock), unsigned(N));
  return launch_k(down_combine_kernel<T, kAddNorm>, grid, dim3(kWarpsPerBlock * 32), 0, stream, pdl, act, p.expert,
                  weight, down, out, K, E, H, I, vec, epi, p.done);
}

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
  const AddNormRows<T> epi{static_cast<const T*>(p.out), static_cast<const T*>(p.residual),
                           static_cast<const T*>(p.norm_weight), static_cast<T*>(p.sum_out),
                           static_cast<T*>(p.normed_out), N, H, p.eps};
  // One launch for both passes where the vector paths apply and a token's act rows fit the shared memory (8 of
  // Qwen3-30B-A3B's 768-row experts: 12 KB in bf16); elsewhere the two launches, with the same result.
  if (p.shape.one_launch && vec_gu && vec_dn && K <= kMaxParallelSlots && size_t(K * I) * sizeof(T) <= kMaxStagedAct) {
    return launch_one<T>(p, epi, stream);
  }
  const dim3 block(kWarpsPerBlock * 32);
  const int rows = p.shape.gate_up_rows_per_warp;
  const dim3 grid_gu(unsigned((I + kWarpsPerBlock * rows - 1) / (kWarpsPerBlock * rows)), unsigned(N * K));
  const auto gate_up = rows == 4 ? gate_up_act_kernel<T, 4> : rows == 2 ? gate_up_act_kernel<T, 2> : gate_up_act_kernel<T, 1>;
  cudaError_t err = launch_k(gate_up, grid_gu, block, 0, stream, pdl, static_cast<const T*>(p.x), p.expert,
                             static_cast<const T*>(p.gate_up), static_cast<T*>(p.act), K, E, H, I, vec_gu);
  if (err != cudaSuccess) return err;
  if (p.has_add_norm()) return launch_down<T, true>(p, epi, vec_dn, pdl, stream);
  return launch_down<T, false>(p, epi, vec_dn, pdl, stream);
}

}  // namespace

cudaError_t moe_decode_cuda(const MoeDecodeParams& p, cudaStream_t stream) {
  if (*check_moe_decode_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
