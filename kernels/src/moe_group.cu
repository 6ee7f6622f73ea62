// moe_group.h on the GPU: a stable counting sort of the slots by expert in three kernels over tiles of kTile slots.
//   count:   per tile, each expert's slots (shared-memory atomics; order does not matter for a count)
//   scan:    one block: the exclusive prefix over (expert, tile), expert-major, so that expert e's rows start after
//            every lower expert's and, within e, tile t's after the tiles before it; ends[e] from it
//   scatter: per tile, in rounds of one slot per thread: a slot's row is its tile's start for its expert, plus the
//            same-expert slots of earlier rounds (a running count), of lower warps in this round (per-warp counts in
//            shared memory) and of lower lanes of its warp (__match_any_sync). Slot order is kept everywhere, so the
//            permutation is a stable sort's.
// Ids outside [0, E) are skipped (their slots get no row): memory-safe on a router's bad output, which the CPU
// reference reports instead.
#include <algorithm>

#include "cuda_common.cuh"
#include "rtp/kernels/moe_group.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kTile = 1024;          // slots per tile (block of the count and scatter kernels)
constexpr int kScatterThreads = 256; // 8 warps: per-warp counts of up to kMoeGroupMaxExperts fit 32 KB
constexpr int kScatterWarps = kScatterThreads / 32;
constexpr int kCountThreads = 256;
constexpr int kScanThreads = 1024;

int64_t tiles_of(int64_t slots) { return (slots + kTile - 1) / kTile; }

__device__ __forceinline__ bool valid_expert(int64_t e, int64_t E) { return e >= 0 && e < E; }

// counts[e * tiles + t]: tile t's slots of expert e.
__global__ void __launch_bounds__(kCountThreads) count_kernel(const int64_t* __restrict__ expert, int64_t S, int E,
                                                              int tiles, int32_t* __restrict__ counts) {
  __shared__ int32_t cnt[kMoeGroupMaxExperts];
  for (int e = threadIdx.x; e < E; e += kCountThreads) cnt[e] = 0;
  __syncthreads();
  const int64_t t0 = int64_t(blockIdx.x) * kTile;
  for (int i = threadIdx.x; i < kTile && t0 + i < S; i += kCountThreads) {
    const int64_t e = expert[t0 + i];
    if (valid_expert(e, E)) atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kCountThreads) counts[int64_t(e) * tiles + blockIdx.x] = cnt[e];
}

// In place: counts -> exclusive prefix (expert-major), then ends[e] = the prefix at expert e + 1's first tile.
__global__ void __launch_bounds__(kScanThreads) scan_kernel(int32_t* __restrict__ counts, int64_t n, int E, int tiles,
                                                            int32_t* __restrict__ ends) {
  __shared__ int32_t warp_total[kScanThreads / 32];
  __shared__ int32_t grand_total;  // the slots with a valid id (S unless some were skipped)
  const int64_t per = (n + kScanThreads - 1) / kScanThreads;
  const int64_t lo = std::min<int64_t>(n, int64_t(threadIdx.x) * per), hi = std::min<int64_t>(n, lo + per);
  int32_t sum = 0;
  for (int64_t i = lo; i < hi; ++i) sum += counts[i];
  // Block-wide exclusive scan of the threads' sums: within each warp, then over the warps' totals.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int32_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int32_t w = warp_total[lane], wi = w;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t v = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += v;
    }
    warp_total[lane] = wi - w;  // exclusive
    if (lane == 31) grand_total = wi;
  }
  __syncthreads();
  int32_t run = warp_total[warp] + incl - sum;
  for (int64_t i = lo; i < hi; ++i) {
    const int32_t c = counts[i];
    counts[i] = run;
    run += c;
  }
  __syncthreads();  // the prefixes other threads wrote, before ends reads them
  for (int e = threadIdx.x; e < E; e += kScanThreads) ends[e] = e + 1 < E ? counts[int64_t(e + 1) * tiles] : grand_total;
}

__global__ void __launch_bounds__(kScatterThreads) scatter_kernel(const int64_t* __restrict__ expert, int64_t S,
                                                                  int64_t K, int E, int tiles,
                                                                  const int32_t* __restrict__ base,
                                                                  int64_t* __restrict__ row_token,
                                                                  int64_t* __restrict__ slot_row) {
  __shared__ int32_t running[kMoeGroupMaxExperts];             // this tile's next row per expert
  __shared__ int32_t warp_count[kScatterWarps][kMoeGroupMaxExperts];  // this round's slots per (warp, expert)
  for (int e = threadIdx.x; e < E; e += kScatterThreads) {
    running[e] = base[int64_t(e) * tiles + blockIdx.x];
    for (int w = 0; w < kScatterWarps; ++w) warp_count[w][e] = 0;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int64_t t0 = int64_t(blockIdx.x) * kTile;
  for (int r0 = 0; r0 < kTile && t0 + r0 < S; r0 += kScatterThreads) {
    const int64_t s = t0 + r0 + threadIdx.x;
    const int64_t e64 = s < S ? expert[s] : -1;
    const int e = valid_expert(e64, E) ? int(e64) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const bool leader = (peers & lower_lanes) == 0u;
    if (e >= 0 && leader) warp_count[warp][e] = __popc(peers);
    __syncthreads();
    if (e >= 0) {
      int32_t row = running[e] + __popc(peers & lower_lanes);
      for (int w = 0; w < warp; ++w) row += warp_count[w][e];
      row_token[row] = s / K;
      slot_row[s] = row;
    }
    __syncthreads();  // every row of this round read running and warp_count
    if (e >= 0 && leader) {
      atomicAdd(&running[e], __popc(peers));
      warp_count[warp][e] = 0;
    }
    __syncthreads();
  }
}

}  // namespace

size_t moe_group_workspace_bytes(int64_t slots, int64_t experts) {
  return size_t(std::max<int64_t>(1, tiles_of(slots) * experts)) * sizeof(int32_t);
}

cudaError_t moe_group_cuda(const MoeGroupParams& p, cudaStream_t stream) {
  if (*check_moe_group_params(p, true)) return cudaErrorInvalidValue;
  const int64_t tiles = tiles_of(p.slots);
  if (tiles > 0x7fffffff / p.experts) return cudaErrorInvalidValue;
  const int E = int(p.experts), T = int(tiles);
  auto* counts = static_cast<int32_t*>(p.workspace);
  cudaError_t err = launch_k(count_kernel, dim3(unsigned(T)), dim3(kCountThreads), 0, stream, false, p.expert, p.slots,
                             E, T, counts);
  if (err != cudaSuccess) return err;
  err = launch_k(scan_kernel, dim3(1), dim3(kScanThreads), 0, stream, false, counts, tiles * p.experts, E, T, p.ends);
  if (err != cudaSuccess) return err;
  return launch_k(scatter_kernel, dim3(unsigned(T)), dim3(kScatterThreads), 0, stream, false, p.expert, p.slots,
                  p.slots_per_token, E, T, static_cast<const int32_t*>(counts), p.row_token, p.slot_row);
}

}  // namespace rtp::kernels
