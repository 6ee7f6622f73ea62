// Sparse decode on the GPU (definition in sparse_attention_params.h). Launches:
//   1. stats:   per (retrieval slot, key chunk) and query head of the group: max and sum of exp of the
//               index scores (split over the sequence; bf16 index: scores by mma, 16 tokens x 8 heads); block 0
//               of each slot also zeroes its histogram and selected count (no memset nodes)
//   2. hist:    combine the chunk stats, P(j) = mean_h p_h(j), per-token bin (uint16, 0xFFFF = forced) and a
//               histogram of P per bin (per-warp shared-memory histograms, then global atomics); with
//               DecodeTuning::bstar_in_attend off, the block that finishes last finds the cut bin b*
//   3. attend:  split-K attention: each thread block a chunk of keys of one KV head for all G query heads
//               (tensor cores, G rows padded to 16); retrieval blocks find b* from the histogram (one parallel
//               scan each; or read the hist launch's) and compact the chunk's kept tokens first; streaming
//               heads read the valid ring slots; dense heads every token
//   4. combine: per query head, merge the chunk partials (m, l, acc)
// Launches 1-2 exist only when a KV head is RETRIEVAL.
#include <cuda_bf16.h>

#include <cmath>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cuda_common.cuh"
#include "decode_splits.h"
#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels {
namespace {
using namespace cuda_detail;

constexpr int kAttnThreads = 128;  // 4 warps
constexpr int kMaxG = 16;
// mma attend: each warp owns 16 keys of a 64-key tile; two tile stages in flight per block.
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaTile = kMmaWarps * 16;
constexpr int kMmaStages = 2;  // tile stages of the default attend (DecodeTuning::attend_tile_stages: 2 or 3)
constexpr int kRetChunkMax = kRetrievalChunkMax;  // candidates per retrieval block (the compacted list lives in shared memory)
constexpr uint16_t kForced = 0xFFFF;

struct DecodeArgs {
  int G, D;
  // L: the KV length, or with `position` (SparseDecodeParams::position) the longest one the grid was sized for;
  // kv_length() gives the call's own.
  int64_t L, cap, ring, sink, window, keep_first, keep_last;
  const int64_t* position;
  SplitTuning splits;
  float scale;
  float top_p;
  int8_t kind[kMaxKvHeads];
  int8_t slot[kMaxKvHeads];  // full slot / ring slot
  int8_t rslot[kMaxKvHeads];  // retrieval slot
  int max_split;  // the partials' stride: the most splits of any KV head (over every length the grid serves)
  unsigned long long* timeline;  // DecodeTuning::timeline
  bool bstar_in_attend;  // the attend's retrieval blocks find b* from the histogram (hist_kernel does not)
  bool attend_first;     // no retrieval head: the attend is the call's first kernel and waits for the caller's
  int shared_carveout;   // DecodeTuning::shared_carveout
  int8_t ret_kvh[kMaxKvHeads];  // KV head of retrieval slot r
};

// The call's KV length: from device memory when the call reads it there (the same value in every block: the caller
// writes it before the call and nothing in the call does).
__device__ __forceinline__ int64_t kv_length(const DecodeArgs& a) { return a.position ? *a.position + 1 : a.L; }
__device__ __forceinline__ int64_t kv_length(const int64_t* position, int64_t L) { return position ? *position + 1 : L; }
__device__ __forceinline__ HeadSplit head_split_of(const DecodeArgs& a, int kvh, int64_t L) {
  return head_split(HeadKind(a.kind[kvh]), L, a.sink, a.window, a.splits);
}

// Timeline probe (DecodeTuning::timeline): thread 0 of every block stamps its start and end.
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void probe_start(unsigned long long* tl, int phase) {
  if (tl && threadIdx.x == 0) atomicMin(tl + 2 * phase, global_ns());
}
__device__ __forceinline__ void probe_end(unsigned long long* tl, int phase) {
  if (tl && threadIdx.x == 0) atomicMax(tl + 2 * phase + 1, global_ns());
}
// A point inside a phase: when the first and the last block passed it.
__device__ __forceinline__ void probe_point(unsigned long long* tl, int phase) {
  if (tl && threadIdx.x == 0) {
    const unsigned long long t = global_ns();
    atomicMin(tl + 2 * phase, t);
    atomicMax(tl + 2 * phase + 1, t);
  }
}

// The four kernels of a call chain by programmatic dependent launch (pdl_trigger / pdl_wait, cuda_common.cuh); the end
// of attend_mma_kernel says why its streaming blocks need no wait at all.

// vec: the row is 16-byte aligned (always, for torch allocations), so it is read in 16-byte loads; the scalar
// path (16 separate loads of 2 or 4 bytes) kept the stats pass latency-bound.
// An index row as loaded, before conversion: a bf16 row held across a wait costs 8 registers instead of 16.
template <typename IT>
struct RawIndexRow {
  static constexpr int N = kIndexDim * sizeof(IT) / 16;
  uint4 v[N];
};
template <typename IT>
__device__ __forceinline__ void load_index_raw(const IT* p, RawIndexRow<IT>& r, bool vec) {
  if (vec) {
#pragma unroll
    for (int i = 0; i < RawIndexRow<IT>::N; ++i) r.v[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
  } else {
    IT* e = reinterpret_cast<IT*>(r.v);
#pragma unroll
    for (int d = 0; d < kIndexDim; ++d) e[d] = p[d];
  }
}
template <typename IT>
__device__ __forceinline__ void unpack_index_row(const RawIndexRow<IT>& r, float* out) {
  const IT* e = reinterpret_cast<const IT*>(r.v);
#pragma unroll
  for (int d = 0; d < kIndexDim; ++d) out[d] = to_float(e[d]);
}
template <typename IT>
__device__ __forceinline__ void load_index_row(const IT* p, float* out, bool vec) {
  RawIndexRow<IT> r;
  load_index_raw(p, r, vec);
  unpack_index_row(r, out);
}

// q . k over the 16 index dims as two interleaved FMA chains (one chain of 16 dependent FMAs was the latency of
// every score).
__device__ __forceinline__ float index_score(const float* q, const float* k) {
  float s0 = 0.f, s1 = 0.f;
#pragma unroll
  for (int d = 0; d < kIndexDim; d += 2) {
    s0 = fmaf(q[d], k[d], s0);
    s1 = fmaf(q[d + 1], k[d + 1], s1);
  }
  return s0 + s1;
}

// Index rows per thread per step of the stats and hist loops (ROWS, a template argument): 2 is one DRAM round trip
// for two rows, 1 keeps the stats kernel at ~61 registers instead of ~85 (twice the resident blocks). Which wins
// depends on the length; DecodeTuning::index_rows_per_thread picks, the default is kDefaultRows.
constexpr int kDefaultRows = 1;

// Zeroes retrieval slot r's histogram, forced mass, ticket and selected count; called by every thread of block
// (0, r) of the stats launch. The hist and attend launches that accumulate into them wait for that launch (the
// call's first kernel, which waits for the kernel before it first, so nothing of the call before can still be reading
// them), and a memset node per call cost as much as a small kernel.
__device__ __forceinline__ void reset_slot(int r, float* hist, float* forced_mass, uint32_t* done,
                                           int32_t* selected_count) {
  for (int i = threadIdx.x; i < kDecodeBins; i += blockDim.x) hist[int64_t(r) * kDecodeBins + i] = 0.f;
  if (threadIdx.x == 0) {
    forced_mass[r] = 0.f;
    done[r] = 0u;
    if (selected_count) selected_count[r] = 0;
  }
}

// grid (>= nchunks, R); block 256. stats[(r * nchunks + chunk) * G + h] = (max, sum exp(s - max)); nchunks and the
// chunk from index_split (decode_splits.h) at the call's length.
// GM >= G bounds the unrolled per-head state (GM 16 for every G spilled 570 bytes of registers). Block (0, r)
// resets slot r (reset_slot). The CUDA-core kernel: fp32 index, or DecodeTuning::index_tensor_cores off.
template <typename IT, int GM, int kRows>
__global__ void __launch_bounds__(256) stats_kernel(const IT* iq, const IT* ik, float2* stats, float* hist,
                                                    float* forced_mass, uint32_t* done, int32_t* selected_count,
                                                    int G, int64_t host_L, const int64_t* position,
                                                    SplitTuning splits, int64_t cap, bool vec,
                                                    unsigned long long* tl) {
  __shared__ float q[GM][kIndexDim];
  __shared__ float2 red[8][GM];
  const int r = blockIdx.y, tid = threadIdx.x;
  // The call's first kernel: waits for the caller's kernels (the token store wrote the index row and K/V), then lets
  // the hist pass launch, so the next kernel's launch need not wait for this block's split arithmetic.
  pdl_wait_then_trigger();
  const int64_t L = kv_length(position, host_L);
  const IndexSplit is = index_split(L, splits);
  if (int(blockIdx.x) >= is.nstats) return;  // a grid sized for a longer length
  const int nchunks = is.nstats, chunk = is.stat_chunk;
  probe_start(tl, kPhaseStats);
  if (blockIdx.x == 0) reset_slot(r, hist, forced_mass, done, selected_count);
  const int64_t j0 = int64_t(blockIdx.x) * chunk, j1 = min(L, j0 + chunk);
  // kRows rows per thread loaded before any is used (one DRAM round trip per kRows rows, not per row).
  float k[kRows][kIndexDim];
  auto load_rows = [&](int64_t jb) {
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      const int64_t j = jb + u * blockDim.x;
      if (j < j1) load_index_row(ik + (int64_t(r) * cap + j) * kIndexDim, k[u], vec);
    }
  };
  // The first rows are requested before the query: the two round trips overlap instead of following each other.
  load_rows(j0 + tid);
  for (int i = tid; i < G * kIndexDim; i += blockDim.x) q[i / kIndexDim][i % kIndexDim] = to_float(iq[(int64_t(r) * G) * kIndexDim + i]) * 0.25f;
  __syncthreads();
  SoftmaxPartial sp[GM];
  for (int64_t jb = j0 + tid; jb < j1; jb += kRows * blockDim.x) {
    if (jb != j0 + tid) load_rows(jb);
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      if (jb + u * blockDim.x >= j1) break;
#pragma unroll
      for (int h = 0; h < GM; ++h) {
        if (h >= G) break;
        sp[h].add(index_score(q[h], k[u]));
      }
    }
  }
  probe_point(tl, kPhaseStatsRows);
  // All heads reduced with one barrier (the version before paid four per head).
  const int warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    if (h >= G) break;
    const float m = warp_max(sp[h].m);
    const float s = warp_sum(sp[h].m == -INFINITY ? 0.f : sp[h].s * __expf(sp[h].m - m));
    if (lane == 0) red[warp][h] = make_float2(m, s);
  }
  __syncthreads();
  if (tid < G) {
    float gm = -INFINITY;
    for (int w = 0; w < 8; ++w) gm = fmaxf(gm, red[w][tid].x);
    float gs = 0.f;
    for (int w = 0; w < 8; ++w)
      if (red[w][tid].x != -INFINITY) gs += red[w][tid].y * __expf(red[w][tid].x - gm);
    stats[(int64_t(r) * nchunks + blockIdx.x) * G + tid] = make_float2(gm, gs);
  }
  probe_end(tl, kPhaseStats);
}


// b* of the spec (sparse_attention_params.h) from the complete histogram hh[kDecodeBins] of one retrieval slot
// and its forced mass; called by all NT threads of a block, returns b* in every thread. Z, the total mass, is
// summed here (1 up to rounding) and the cut is taken at top_p * Z; top_p >= 1 selects every bin.
template <int NT>
__device__ int cut_bin(const float* hh, float forced, float top_p) {
  constexpr int PER = kDecodeBins / NT;  // consecutive bins per thread
  constexpr int NW = NT / 32;
  static_assert(kDecodeBins % NT == 0, "bins per thread");
  __shared__ float wsum[NW];
  __shared__ int s_b;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  float v[PER];
  float mine = 0.f;
#pragma unroll
  for (int i = 0; i < PER; ++i) mine += (v[i] = __ldcg(hh + tid * PER + i));  // L2: the other blocks' atomics
  const float incl = warp_inclusive_scan(mine);
  if (lane == 31) wsum[warp] = incl;
  if (tid == 0) s_b = kDecodeBins - 1;
  __syncthreads();
  float before = forced, Z = forced;
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    before += w < warp ? wsum[w] : 0.f;
    Z += wsum[w];
  }
  before += incl - mine;
  if (top_p < 1.f) {
    const float need = top_p * Z;
    if (forced >= need) {
      if (tid == 0) s_b = -1;
    } else {
      float acc = before;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        acc += v[i];
        if (acc >= need) {
          atomicMin(&s_b, tid * PER + i);
          break;
        }
      }
    }
  }
  __syncthreads();
  return s_b;
}

// Adds v to bin key of this warp's own histogram wh (key < 0: nothing), summed first over the lanes with the same
// key. A float atomicAdd on shared memory is a compare-and-swap loop (LDS, FADD, ATOMS.CAST.SPIN) in which one lane
// per round wins: neighbouring tokens often share a bin (whole warps of them for the benchmark's planted blocks,
// and scores of real models are locally correlated too), and those rounds were most of the hist pass's binning.
// Here each (warp, bin) is written by one lane, without atomics; the lowest lane of a key gathers the others'
// values in (largest group - 1) shuffle rounds, none when every key is distinct.
__device__ __forceinline__ void warp_hist_add(float* wh, int key, float v) {
  const int lane = threadIdx.x % 32;
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  const bool leader = lane == __ffs(peers) - 1;
  float s = v;
  if (__all_sync(0xffffffffu, peers == 0xffffffffu)) {
    s = warp_sum(v);
  } else {
    unsigned rest = leader ? peers & (peers - 1) : 0u;
    while (__any_sync(0xffffffffu, rest != 0u)) {
      const int src = rest ? __ffs(rest) - 1 : lane;
      const float o = __shfl_sync(0xffffffffu, v, src);
      if (rest) {
        s += o;
        rest &= rest - 1;
      }
    }
  }
  if (key >= 0 && leader) wh[key] += s;
}

// The hist pass's shared state and the steps both of its kernels (CUDA-core and tensor-core scores) share.
constexpr int kHistThreads = 256;
struct HistShared {
  static constexpr int NW = kHistThreads / 32;
  float gm[kMaxG], ginv[kMaxG];  // per head: max of the scores, 1 / (G * sum exp(s - max))
  float wh[NW][kDecodeBins];     // one histogram per warp (warp_hist_add), summed at the end
  float forced;
  bool last;
};

// Called by every thread after the wait for stats_kernel: one warp per head merges the nstats chunk statistics
// (one thread per head read them all serially before: ~nchunks dependent L2 round trips in every block). Each
// lane issues its loads in batches of MB before merging: the rolled loop was one L2 round trip per 32 chunks on the
// path to every hist block's first token. Heads G..kMaxG-1 get weight 0.
__device__ __forceinline__ void merge_chunk_stats(const float2* stats, int r, int nstats, int G, HistShared& sh) {
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  if (tid == 0) sh.forced = 0.f;
  if (tid >= G && tid < kMaxG) sh.gm[tid] = 0.f, sh.ginv[tid] = 0.f;
  constexpr int MB = 8;
  for (int h = warp; h < G; h += HistShared::NW) {
    float2 acc = make_float2(-INFINITY, 0.f);
    for (int c0 = lane; c0 < nstats; c0 += 32 * MB) {
      float2 v[MB];
#pragma unroll
      for (int u = 0; u < MB; ++u) {
        const int c = c0 + 32 * u;
        v[u] = c < nstats ? stats[(int64_t(r) * nstats + c) * G + h] : make_float2(-INFINITY, 0.f);
      }
#pragma unroll
      for (int u = 0; u < MB; ++u) acc = merge_ms(acc, v[u]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      acc = merge_ms(acc, make_float2(__shfl_xor_sync(0xffffffffu, acc.x, o), __shfl_xor_sync(0xffffffffu, acc.y, o)));
    if (lane == 0) {
      sh.gm[h] = acc.x;
      sh.ginv[h] = 1.f / (acc.y * float(G));
    }
  }
  __syncthreads();
}

// Token j's bin and histogram entry (valid: j is in this block's range; P its mean probability). Called by all
// lanes of a warp together; fsum collects the forced tokens' mass.
__device__ __forceinline__ void bin_token(bool valid, int64_t j, float P, int64_t t, int64_t keep_first,
                                          int64_t keep_last, uint16_t* bins_r, float* wh, float& fsum) {
  int key = -1;  // bin of an unforced token; -1: forced, or past the chunk
  if (valid) {
    int bin = kDecodeBins - 1;
    if (P > 0.f) bin = int(fminf(float(kDecodeBins - 1), fmaxf(0.f, floorf(-float(kDecodeBinsPerOctave) * log2f(P)))));
    if (j < keep_first || j > t - keep_last) {
      fsum += P;
      bins_r[j] = kForced;
    } else {
      key = bin;
      bins_r[j] = uint16_t(bin);
    }
  }
  warp_hist_add(wh, key, valid ? P : 0.f);
}

// After the binning loop, every thread: the block's histogram into the slot's global one; then the block that
// draws the last ticket of its slot (of nblocks: the blocks of the slot that work) finds b* (unless the attend does:
// cut_here false).
__device__ __forceinline__ void finish_hist(HistShared& sh, float fsum, int r, float* hist, float* forced_mass,
                                            uint32_t* done, int32_t* bstar_out, float top_p, bool cut_here,
                                            int nblocks, unsigned long long* tl) {
  const int tid = threadIdx.x, lane = tid % 32;
  fsum = warp_sum(fsum);
  if (lane == 0) atomicAdd(&sh.forced, fsum);
  __syncthreads();
  for (int i = tid; i < kDecodeBins; i += kHistThreads) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < HistShared::NW; ++w) v += sh.wh[w][i];
    if (v != 0.f) atomicAdd(&hist[int64_t(r) * kDecodeBins + i], v);
  }
  if (tid == 0) atomicAdd(&forced_mass[r], sh.forced);
  probe_point(tl, kPhaseHistBinned);
  if (!cut_here) {  // the attend's retrieval blocks find b* themselves once this grid has finished
    probe_end(tl, kPhaseHist);
    return;
  }
  // Last-block handoff: every thread's atomics are ordered before the ticket, so the block that draws the last
  // ticket sees the complete histogram.
  __threadfence();
  __syncthreads();
  if (tid == 0) sh.last = atomicAdd(&done[r], 1u) == unsigned(nblocks - 1);
  __syncthreads();
  if (!sh.last) {
    probe_end(tl, kPhaseHist);
    return;
  }
  __threadfence();
  const int b = cut_bin<kHistThreads>(hist + int64_t(r) * kDecodeBins, __ldcg(&forced_mass[r]), top_p);
  if (tid == 0) bstar_out[r] = b;
  probe_end(tl, kPhaseHist);
}

// grid (>= ceil(L / chunk), R), block kHistThreads; hist[r][kDecodeBins], forced[r] and done[r] zeroed by
// stats_kernel; nstats: the stats pass's chunks per slot (its own chunking may differ). The last block of slot r to
// finish (ticket done[r]) writes bstar_out[r]. At most 48 registers: its blocks must be resident beside the stats
// blocks they wait for.
template <typename IT, int GM, int kRows>
__global__ void __launch_bounds__(kHistThreads, 5) hist_kernel(const IT* iq, const IT* ik, const float2* stats, uint16_t* bins,
                                                   float* hist, float* forced_mass, uint32_t* done, int32_t* bstar_out,
                                                   int G, int64_t host_L, const int64_t* position,
                                                   SplitTuning splits, int64_t cap,
                                                   int64_t keep_first, int64_t keep_last, float top_p, bool vec,
                                                   bool cut_here, unsigned long long* tl) {
  __shared__ float q[kMaxG][kIndexDim];
  __shared__ HistShared sh;
  const int r = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  pdl_trigger();  // first: the next kernel's launch need not wait for this block's split arithmetic
  const int64_t L = kv_length(position, host_L);
  const IndexSplit is = index_split(L, splits);
  if (int(blockIdx.x) >= is.nhist) return;  // a grid sized for a longer length
  const int nstats = is.nstats, chunk = is.hist_chunk;
  probe_start(tl, kPhaseHist);
  // The query and this thread's first index rows are the caller's data: loaded before the wait, so with PDL
  // they arrive while stats_kernel is still running.
  for (int i = tid; i < G * kIndexDim; i += kHistThreads) q[i / kIndexDim][i % kIndexDim] = to_float(iq[(int64_t(r) * G) * kIndexDim + i]) * 0.25f;
  for (int i = tid; i < HistShared::NW * kDecodeBins; i += kHistThreads) (&sh.wh[0][0])[i] = 0.f;
  const int64_t j0 = int64_t(blockIdx.x) * chunk, j1 = min(L, j0 + chunk);
  RawIndexRow<IT> kraw[kRows];  // converted per token: the rows prefetched across the wait stay packed
  auto load_rows = [&](int64_t jb) {
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      const int64_t j = jb + u * kHistThreads;
      if (j < j1) load_index_raw(ik + (int64_t(r) * cap + j) * kIndexDim, kraw[u], vec);
    }
  };
  load_rows(j0 + tid);
  pdl_wait();  // stats, and hist zeroed by stats_kernel
  merge_chunk_stats(stats, r, nstats, G, sh);
  probe_point(tl, kPhaseHistMerged);
  const int64_t t = L - 1;
  float fsum = 0.f;
  // The loop bounds are warp-uniform (warp_hist_add needs every lane): lane j of a warp takes token wb + j.
  for (int64_t wb = j0 + warp * 32; wb < j1; wb += kRows * kHistThreads) {
    const int64_t jb = wb + lane;
    if (wb != j0 + warp * 32) load_rows(jb);  // the first rows were loaded before the wait
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      if (wb + u * kHistThreads >= j1) break;
      const int64_t j = jb + u * kHistThreads;
      float P = 0.f;
      if (j < j1) {
        float k[kIndexDim];
        unpack_index_row(kraw[u], k);
#pragma unroll
        for (int h = 0; h < GM; ++h) {  // unrolled: the heads' scores and exps overlap
          if (h >= G) break;
          P += __expf(index_score(q[h], k) - sh.gm[h]) * sh.ginv[h];
        }
      }
      bin_token(j < j1, j, P, t, keep_first, keep_last, bins + int64_t(r) * cap, sh.wh[warp], fsum);
    }
  }
  finish_hist(sh, fsum, r, hist, forced_mass, done, bstar_out, top_p, cut_here, is.nhist, tl);
}

// ---- Index scores on the tensor cores (bf16 index rows and queries) ----
// One mma.m16n8k16 gives 16 tokens x 8 heads of q . k: the 128 FMAs per token of the CUDA-core kernels were most of
// the stats and hist passes' issue slots (1M: stats 21 us, binning 17-33 us). bf16 x bf16 products are exact in
// fp32, so the scores differ from the FMA path's only in the order of the 16 additions; q * 0.25 (1 / sqrt(16)) is
// exact in bf16 too.

// A fragment of a 16-token m-tile (rows = tokens, k = the 16 index dims): this lane's rows g and g + 8, dims
// 2*q4.. and 2*q4 + 8..; rows at or past nvalid are zero.
__device__ __forceinline__ void load_index_tile(const __nv_bfloat16* rows, int64_t nvalid, uint32_t (&a)[4]) {
  const int lane = threadIdx.x % 32, g = lane >> 2, q4 = lane & 3;
  const uint32_t* r0 = reinterpret_cast<const uint32_t*>(rows + int64_t(g) * kIndexDim) + q4;
  const uint32_t* r1 = reinterpret_cast<const uint32_t*>(rows + int64_t(g + 8) * kIndexDim) + q4;
  const bool v0 = g < nvalid, v1 = g + 8 < nvalid;
  a[0] = v0 ? __ldg(r0) : 0u;
  a[1] = v1 ? __ldg(r1) : 0u;
  a[2] = v0 ? __ldg(r0 + 4) : 0u;
  a[3] = v1 ? __ldg(r1 + 4) : 0u;
}

// B fragments of the scaled index queries, n-tile nt = heads 8*nt.. (head 8*nt + g in this lane; zero past G).
template <int GN>
__device__ __forceinline__ void load_query_frags(const __nv_bfloat16* iq_r, int G, uint32_t (&b)[GN][2]) {
  const int lane = threadIdx.x % 32, g = lane >> 2, q4 = lane & 3;
#pragma unroll
  for (int nt = 0; nt < GN; ++nt) {
    const int h = nt * 8 + g;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t v = 0u;
      if (h < G) {
        const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162*>(iq_r + h * kIndexDim + half * 8 + q4 * 2);
        v = pack_bf16(__low2float(x) * 0.25f, __high2float(x) * 0.25f);
      }
      b[nt][half] = v;
    }
  }
}

// grid (>= nchunks, R); block 256; as stats_kernel (same outputs), bf16 index, G <= 8 * GN. Warp w takes the m-tiles
// at j0 + 16 * (w + 8 i), the next one's rows in flight during this one's math. This lane's scores are tokens g and
// g + 8 of each tile for heads 8 nt + 2 q4 + {0, 1}: its running (max, sum) are per such head.
template <int GN>
__global__ void __launch_bounds__(256) stats_mma_kernel(const __nv_bfloat16* iq, const __nv_bfloat16* ik, float2* stats,
                                                        float* hist, float* forced_mass, uint32_t* done,
                                                        int32_t* selected_count, int G, int64_t host_L,
                                                        const int64_t* position, SplitTuning splits, int64_t cap,
                                                        unsigned long long* tl) {
  __shared__ float2 red[8][8 * GN];
  const int r = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, q4 = lane & 3;
  pdl_wait_then_trigger();  // as stats_kernel
  const int64_t L = kv_length(position, host_L);
  const IndexSplit is = index_split(L, splits);
  if (int(blockIdx.x) >= is.nstats) return;  // a grid sized for a longer length
  const int nchunks = is.nstats, chunk = is.stat_chunk;
  probe_start(tl, kPhaseStats);
  if (blockIdx.x == 0) reset_slot(r, hist, forced_mass, done, selected_count);
  const int64_t j0 = int64_t(blockIdx.x) * chunk, j1 = min(L, j0 + chunk);
  const __nv_bfloat16* rows = ik + int64_t(r) * cap * kIndexDim;
  int64_t t0 = j0 + 16 * warp;
  uint32_t a[4] = {0u, 0u, 0u, 0u};
  if (t0 < j1) load_index_tile(rows + t0 * kIndexDim, j1 - t0, a);
  uint32_t b[GN][2];
  load_query_frags<GN>(iq + int64_t(r) * G * kIndexDim, G, b);
  SoftmaxPartial sp[GN][2];
  for (; t0 < j1; t0 += 16 * 8) {
    const uint32_t cur[4] = {a[0], a[1], a[2], a[3]};
    const int64_t nv = j1 - t0, tn = t0 + 16 * 8;
    if (tn < j1) load_index_tile(rows + tn * kIndexDim, j1 - tn, a);
#pragma unroll
    for (int nt = 0; nt < GN; ++nt) {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      mma_bf16_16816(c, cur, b[nt][0], b[nt][1]);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if ((e < 2 ? g : g + 8) >= nv) continue;
        const int hh = e & 1;
        sp[nt][hh].add(c[e]);
      }
    }
  }
  probe_point(tl, kPhaseStatsRows);
#pragma unroll
  for (int nt = 0; nt < GN; ++nt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float2 acc = sp[nt][hh].get();
#pragma unroll
      for (int o = 4; o < 32; o <<= 1)  // over g: the lanes holding the same heads
        acc = merge_ms(acc, make_float2(__shfl_xor_sync(0xffffffffu, acc.x, o), __shfl_xor_sync(0xffffffffu, acc.y, o)));
      if (g == 0) red[warp][nt * 8 + q4 * 2 + hh] = acc;
    }
  __syncthreads();
  if (tid < G) {
    float2 acc = make_float2(-INFINITY, 0.f);
#pragma unroll
    for (int w = 0; w < 8; ++w) acc = merge_ms(acc, red[w][tid]);
    stats[(int64_t(r) * nchunks + blockIdx.x) * G + tid] = acc;
  }
  probe_end(tl, kPhaseStats);
}

// grid (>= ceil(L / chunk), R), block kHistThreads; as hist_kernel (same outputs), bf16 index, G <= 8 * GN. A warp
// takes 32 tokens per step (two m-tiles); after the quad sums over heads, lane q4 of a quad bins token
// g + 8 (q4 & 1) of m-tile q4 >> 1.
template <int GN>
__global__ void __launch_bounds__(kHistThreads, 5) hist_mma_kernel(
    const __nv_bfloat16* iq, const __nv_bfloat16* ik, const float2* stats, uint16_t* bins, float* hist,
    float* forced_mass, uint32_t* done, int32_t* bstar_out, int G, int64_t host_L, const int64_t* position,
    SplitTuning splits, int64_t cap, int64_t keep_first, int64_t keep_last, float top_p, bool cut_here,
    unsigned long long* tl) {
  __shared__ HistShared sh;
  const int r = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, q4 = lane & 3;
  pdl_trigger();  // first: the next kernel's launch need not wait for this block's split arithmetic
  const int64_t L = kv_length(position, host_L);
  const IndexSplit is = index_split(L, splits);
  if (int(blockIdx.x) >= is.nhist) return;  // a grid sized for a longer length
  const int nstats = is.nstats, chunk = is.hist_chunk;
  probe_start(tl, kPhaseHist);
  for (int i = tid; i < HistShared::NW * kDecodeBins; i += kHistThreads) (&sh.wh[0][0])[i] = 0.f;
  const int64_t j0 = int64_t(blockIdx.x) * chunk, j1 = min(L, j0 + chunk);
  const __nv_bfloat16* rows = ik + int64_t(r) * cap * kIndexDim;
  // The query and the first rows are the caller's data: loaded before the wait.
  uint32_t b[GN][2];
  load_query_frags<GN>(iq + int64_t(r) * G * kIndexDim, G, b);
  int64_t wb = j0 + 32 * warp;
  uint32_t a[2][4] = {};
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
    if (wb + 16 * mt < j1) load_index_tile(rows + (wb + 16 * mt) * kIndexDim, j1 - wb - 16 * mt, a[mt]);
  pdl_wait();  // stats, and hist zeroed by stats_kernel
  merge_chunk_stats(stats, r, nstats, G, sh);
  probe_point(tl, kPhaseHistMerged);
  float hm[GN][2], hi[GN][2];  // this lane's heads: max and weight
#pragma unroll
  for (int nt = 0; nt < GN; ++nt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) hm[nt][hh] = sh.gm[nt * 8 + q4 * 2 + hh], hi[nt][hh] = sh.ginv[nt * 8 + q4 * 2 + hh];
  const int64_t t = L - 1;
  uint16_t* bins_r = bins + int64_t(r) * cap;
  float fsum = 0.f;
  for (; wb < j1; wb += 32 * HistShared::NW) {
    uint32_t cur[2][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) cur[mt][i] = a[mt][i];
    const int64_t wn = wb + 32 * HistShared::NW;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
      if (wn + 16 * mt < j1) load_index_tile(rows + (wn + 16 * mt) * kIndexDim, j1 - wn - 16 * mt, a[mt]);
    float e[2][2];  // [m-tile][row g, row g + 8]: this lane's heads' share of P
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      e[mt][0] = e[mt][1] = 0.f;
#pragma unroll
      for (int nt = 0; nt < GN; ++nt) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        mma_bf16_16816(c, cur[mt], b[nt][0], b[nt][1]);
        e[mt][0] += __expf(c[0] - hm[nt][0]) * hi[nt][0] + __expf(c[1] - hm[nt][1]) * hi[nt][1];
        e[mt][1] += __expf(c[2] - hm[nt][0]) * hi[nt][0] + __expf(c[3] - hm[nt][1]) * hi[nt][1];
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        e[mt][rr] += __shfl_xor_sync(0xffffffffu, e[mt][rr], 1);
        e[mt][rr] += __shfl_xor_sync(0xffffffffu, e[mt][rr], 2);
      }
    const int mt = q4 >> 1, rr = q4 & 1;
    const float P = mt ? (rr ? e[1][1] : e[1][0]) : (rr ? e[0][1] : e[0][0]);
    const int64_t j = wb + 16 * mt + g + 8 * rr;
    bin_token(j < j1, j, P, t, keep_first, keep_last, bins_r, sh.wh[warp], fsum);
  }
  finish_hist(sh, fsum, r, hist, forced_mass, done, bstar_out, top_p, cut_here, is.nhist, tl);
}

// The attend before attend_mma_kernel (DecodeTuning::v2_attend selects it): CUDA-core math, one tile at a time.
// grid (max_split, Hkv); block kAttnThreads. Each thread block takes a range of candidate keys of one KV head for
// all G query heads of its group and walks it in tiles of TK keys:
//   select  candidates are tested 128 at a time (retrieval: bin <= b* or forced; others: all) and the chosen rows
//           compacted into a shared list (ballot + warp offsets), so sparse heads gather only what they keep
//   load    the tile's K and V rows into shared memory with cp.async (16-byte rows chunks, zero-filled tail)
//   score   one thread per (key, group of heads): q . k from shared memory, written to S
//   softmax one warp per head: tile max, rescale factor, p = exp(s - m) back into S, running sum
//   PV      one thread per (head, 8 dims): acc = acc * alpha + sum_j p_j v_j
// Every step is parallel over the tile; the version before updated an online softmax key by key (a serial exp
// chain per lane group) and was 3x slower than FlashAttention-2 on the streaming heads.
// part_acc [Hq][max_split][D], part_ml [Hq][max_split].
template <int D, int GM, int TK>
__global__ void __launch_bounds__(kAttnThreads) attend_v2_kernel(const __grid_constant__ DecodeArgs a,
                                                              const __nv_bfloat16* q, const __nv_bfloat16* kf,
                                                              const __nv_bfloat16* vf, const __nv_bfloat16* kr,
                                                              const __nv_bfloat16* vr, const uint16_t* bins,
                                                              const int32_t* bstar_in, float* part_acc,
                                                              float2* part_ml,
                                                              int32_t* selected_count) {
  constexpr int NT = kAttnThreads;
  constexpr int NW = NT / 32;
  constexpr int DP = D + 8;  // 16 bytes of padding per row: 16-byte reads of consecutive rows hit distinct banks
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  constexpr int PARTS = NT / TK;  // score phase: threads sharing a key, each for HPT heads
  constexpr int HPT = (GM + PARTS - 1) / PARTS;
  constexpr int TPH = D / 8;  // PV phase: threads per head, 8 dims each
  constexpr int HPP = NT / TPH;
  constexpr int PASSES = (GM + HPP - 1) / HPP;
  static_assert(NT % TK == 0 && NT % TPH == 0, "tile shape");

  const int kvh = blockIdx.y, split = blockIdx.x;
  const int64_t L = kv_length(a);
  const HeadSplit hs = head_split_of(a, kvh, L);
  if (split >= hs.nsplit) return;
  const int kind = a.kind[kvh];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int G = a.G;
  __shared__ __align__(16) __nv_bfloat16 Ks[TK][DP];
  __shared__ __align__(16) __nv_bfloat16 Vs[TK][DP];
  __shared__ __align__(16) float qs[GM][D];
  __shared__ float S[GM][TK + 1];
  __shared__ float m_s[GM], l_s[GM], alpha_s[GM];
  __shared__ int rows[TK + NT];
  __shared__ int warp_cnt[NW];
  __shared__ int s_bstar;

  const __nv_bfloat16 *K, *V;
  const int64_t nkeys = hs.nkeys;
  const int64_t nsink = min(a.sink, L);
  const uint16_t* mybins = nullptr;
  if (kind == int(HeadKind::STREAMING)) {
    K = kr + int64_t(a.slot[kvh]) * a.ring * D;
    V = vr + int64_t(a.slot[kvh]) * a.ring * D;
  } else {
    K = kf + int64_t(a.slot[kvh]) * a.cap * D;
    V = vf + int64_t(a.slot[kvh]) * a.cap * D;
  }
  if (kind == int(HeadKind::RETRIEVAL)) {
    const int rs = a.rslot[kvh];
    mybins = bins + int64_t(rs) * a.cap;
    if (tid == 0) s_bstar = bstar_in[rs];  // from hist_kernel (this launch is stream-ordered after it)
  }
  for (int i = tid; i < GM * D; i += NT) {
    const int h = i / D;
    (&qs[0][0])[i] = h < G ? __bfloat162float(q[(int64_t(kvh) * G) * D + i]) * a.scale : 0.f;
  }
  if (tid < GM) m_s[tid] = -INFINITY, l_s[tid] = 0.f;
  __syncthreads();
  const int bstar = kind == int(HeadKind::RETRIEVAL) ? s_bstar : 0;
  const int64_t k0 = int64_t(split) * hs.chunk, k1 = min(nkeys, k0 + hs.chunk);

  float acc[PASSES][8];
#pragma unroll
  for (int ps = 0; ps < PASSES; ++ps)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[ps][i] = 0.f;

  auto process_tile = [&](int nk) {
    for (int c = tid; c < TK * CPR; c += NT) {
      const int r = c / CPR, cc = c % CPR;
      const bool valid = r < nk;
      const int64_t row = valid ? rows[r] : 0;
      cp_async16(smem_u32(&Ks[r][cc * 8]), K + row * D + cc * 8, valid ? 16 : 0);
      cp_async16(smem_u32(&Vs[r][cc * 8]), V + row * D + cc * 8, valid ? 16 : 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    {
      const int j = tid % TK, part = tid / TK;
      float sc[HPT];
#pragma unroll
      for (int hh = 0; hh < HPT; ++hh) sc[hh] = 0.f;
#pragma unroll 4
      for (int d0 = 0; d0 < D; d0 += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(&Ks[j][d0]);
        const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&raw);
        float kx[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) kx[i] = __bfloat162float(e[i]);
#pragma unroll
        for (int hh = 0; hh < HPT; ++hh) {
          const int h = part * HPT + hh;
          if (h < GM) {
            const float4 qa = *reinterpret_cast<const float4*>(&qs[h][d0]);
            const float4 qb = *reinterpret_cast<const float4*>(&qs[h][d0 + 4]);
            sc[hh] += qa.x * kx[0] + qa.y * kx[1] + qa.z * kx[2] + qa.w * kx[3] + qb.x * kx[4] + qb.y * kx[5] +
                      qb.z * kx[6] + qb.w * kx[7];
          }
        }
      }
#pragma unroll
      for (int hh = 0; hh < HPT; ++hh) {
        const int h = part * HPT + hh;
        if (h < G) S[h][j] = j < nk ? sc[hh] : -INFINITY;
      }
    }
    __syncthreads();
    for (int h = warp; h < G; h += NW) {
      float tmax = -INFINITY;
      for (int j = lane; j < TK; j += 32) tmax = fmaxf(tmax, S[h][j]);
      tmax = warp_max(tmax);
      const float mo = m_s[h], mn = fmaxf(mo, tmax);
      float psum = 0.f;
      for (int j = lane; j < TK; j += 32) {
        const float p = j < nk ? __expf(S[h][j] - mn) : 0.f;
        S[h][j] = p;
        psum += p;
      }
      psum = warp_sum(psum);
      if (lane == 0) {
        const float al = mo == -INFINITY ? 0.f : __expf(mo - mn);
        alpha_s[h] = al;
        l_s[h] = l_s[h] * al + psum;
        m_s[h] = mn;
      }
    }
    __syncthreads();
#pragma unroll
    for (int ps = 0; ps < PASSES; ++ps) {
      const int h = ps * HPP + tid / TPH, dg = tid % TPH;
      if (h < G) {
        const float al = alpha_s[h];
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[ps][i] *= al;
        for (int j = 0; j < nk; ++j) {
          const float p = S[h][j];
          const uint4 raw = *reinterpret_cast<const uint4*>(&Vs[j][dg * 8]);
          const __nv_bfloat16* e = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[ps][i] = fmaf(p, __bfloat162float(e[i]), acc[ps][i]);
        }
      }
    }
    __syncthreads();  // the next tile overwrites Ks, Vs, S and rows
  };

  int n = 0;  // rows waiting in the list (the same value in every thread)
  int64_t nsel = 0;
  for (int64_t cand = k0; cand < k1; cand += NT) {
    const int64_t j = cand + tid;
    bool sel = j < k1;
    if (sel && mybins) {
      const uint16_t bn = mybins[j];
      sel = bn == kForced || int(bn) <= bstar;
    }
    const unsigned bal = __ballot_sync(0xffffffffu, sel);
    if (lane == 0) warp_cnt[warp] = __popc(bal);
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      before += w < warp ? warp_cnt[w] : 0;
      total += warp_cnt[w];
    }
    if (sel) {
      int64_t row = j;
      if (kind == int(HeadKind::STREAMING)) row = j < nsink ? j : a.sink + (j - nsink);
      rows[n + before + __popc(bal & ((1u << lane) - 1u))] = int(row);
    }
    n += total;
    nsel += total;
    __syncthreads();
    const bool last = cand + NT >= k1;
    while (n >= TK || (last && n > 0)) {
      const int nk = min(n, TK);
      process_tile(nk);
      const int rest = n - nk;
      const int moved = tid < rest ? rows[TK + tid] : 0;  // rest < NT: one row per thread
      __syncthreads();
      if (tid < rest) rows[tid] = moved;
      __syncthreads();
      n = rest;
    }
  }
#pragma unroll
  for (int ps = 0; ps < PASSES; ++ps) {
    const int h = ps * HPP + tid / TPH, dg = tid % TPH;
    if (h < G) {
      float* dst = part_acc + ((int64_t(kvh) * G + h) * a.max_split + split) * D + dg * 8;
#pragma unroll
      for (int i = 0; i < 8; ++i) dst[i] = acc[ps][i];
    }
  }
  if (tid < G) part_ml[(int64_t(kvh) * G + tid) * a.max_split + split] = make_float2(m_s[tid], l_s[tid]);
  if (selected_count && kind == int(HeadKind::RETRIEVAL) && tid == 0)
    atomicAdd(&selected_count[a.rslot[kvh]], int(nsel));
}

__device__ __forceinline__ uint32_t ld_bf16x2(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Offset (in elements) of the 16-byte chunk c of tile row r: the chunk index is XORed with r % 8 so that the 8
// row addresses of an ldmatrix (same logical chunk, consecutive rows) fall in 8 distinct bank groups without
// padding (padding cost 6% more shared memory and the third block per SM).
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

// Barrier of the kMmaThreads threads that run the mma attend (named barrier 1, the whole block of
// attend_mma_kernel): lets the attend helpers run in a larger block on its first four warps.
__device__ __forceinline__ void mma_threads_sync() { asm volatile("bar.sync 1, %0;" ::"n"(kMmaThreads) : "memory"); }

// The mma attend's running state per thread: rows g and g + 8 of the 16-row tile (query heads, zero past G);
// l holds this thread's columns only until write_partial reduces the quad.
template <int D>
struct MmaAttendState {
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float o[D / 8][4];
};

// Q of one KV head's G query heads as mma A fragments (rows g and g + 8, zero past G).
template <int D>
__device__ __forceinline__ void load_q_fragments(const __nv_bfloat16* qh, int G, uint32_t (&qa)[D / 16][4]) {
  const int lane = threadIdx.x % 32, g = lane >> 2, q4 = lane & 3;
  const __nv_bfloat16* q0 = qh + int64_t(g) * D;
  const __nv_bfloat16* q1 = q0 + 8 * D;
  const bool r0 = g < G, r1 = g + 8 < G;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int c = kk * 16 + q4 * 2;
    qa[kk][0] = r0 ? ld_bf16x2(q0 + c) : 0u;
    qa[kk][1] = r1 ? ld_bf16x2(q1 + c) : 0u;
    qa[kk][2] = r0 ? ld_bf16x2(q0 + c + 8) : 0u;
    qa[kk][3] = r1 ? ld_bf16x2(q1 + c + 8) : 0u;
  }
}

// This thread's CAND consecutive candidates' bins, mb[tid * CAND ..] (0xFFFE past n: never kept). They do not depend
// on b*, so the attend issues these loads before it reads the histogram: one L2 round trip less before its tiles.
// Read from L2 (written by the hist launch).
template <int CAND>
__device__ __forceinline__ void load_candidate_bins(const uint16_t* mb, int n, uint16_t (&v)[CAND]) {
  static_assert(CAND % 8 == 0, "whole 16-byte loads");
  const int c0 = threadIdx.x * CAND;
  if (c0 + CAND <= n && reinterpret_cast<uintptr_t>(mb + c0) % 16 == 0) {
#pragma unroll
    for (int i = 0; i < CAND / 8; ++i) {
      const uint4 w = __ldcg(reinterpret_cast<const uint4*>(mb + c0) + i);
      const uint16_t* e = reinterpret_cast<const uint16_t*>(&w);
#pragma unroll
      for (int x = 0; x < 8; ++x) v[8 * i + x] = e[x];
    }
  } else {
#pragma unroll
    for (int i = 0; i < CAND; ++i) v[i] = c0 + i < n ? __ldcg(mb + c0 + i) : uint16_t(0xFFFE);
  }
}

// Compacts the kept candidates (bin <= b* or forced) among the block's n <= NT * CAND candidates into list, in order;
// mb: this thread's bins (load_candidate_bins). A block scan of the counts gives the offsets. Called by every
// thread of the block; returns the count in every thread.
template <int NT, int CAND>
__device__ __forceinline__ int compact_kept(const uint16_t (&mb)[CAND], int bstar, uint16_t* list, int* warp_cnt) {
  static_assert(CAND <= 32, "one bit per candidate");
  constexpr int NW = NT / 32;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  uint32_t keep = 0;
#pragma unroll
  for (int i = 0; i < CAND; ++i) {
    const uint16_t bn = mb[i];
    if (bn == kForced || int(bn) <= bstar) keep |= 1u << i;
  }
  const int cnt = __popc(keep);
  const int incl = warp_inclusive_scan(cnt);
  if (lane == 31) warp_cnt[warp] = incl;
  mma_threads_sync();
  int before = incl - cnt, total = 0;
#pragma unroll
  for (int w = 0; w < NW; ++w) {
    before += w < warp ? warp_cnt[w] : 0;
    total += warp_cnt[w];
  }
  while (keep) {
    const int i = __ffs(keep) - 1;
    keep &= keep - 1;
    list[before++] = uint16_t(tid * CAND + i);
  }
  mma_threads_sync();  // the list is complete; warp_cnt may be reused
  return total;
}

// Attends the G query heads (qa) to n key rows, row i = k0 + (list ? list[i] : i), in 64-key tiles with the next
// S - 1 tiles' cp.async in flight during this tile's math (kvs: the S tile stages). Per warp 16 keys of a tile:
// S = Q K^T (mma m16n8k16, K by ldmatrix), online softmax in registers (rows are quads of lanes), O += P V (P
// re-packed from the S accumulators, V by ldmatrix.trans). Scores are in log2 units (sl2 = scale * log2 e).
// Called by every thread of a kMmaThreads block; st carries over between calls.
template <int D, int S>
__device__ __forceinline__ void attend_rows(const __nv_bfloat16* K, const __nv_bfloat16* V, int64_t k0,
                                            const uint16_t* list, int n, const uint32_t (&qa)[D / 16][4], float sl2,
                                            __nv_bfloat16* kvs, MmaAttendState<D>& st) {
  constexpr int NT = kMmaThreads, TK = kMmaTile, CPR = D / 8, KS = D / 16, NO = D / 8;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int ntiles = (n + TK - 1) / TK;
  auto load_tile = [&](int t, int stage) {
    __nv_bfloat16* Ks = kvs + stage * 2 * TK * D;
    __nv_bfloat16* Vs = Ks + TK * D;
#pragma unroll
    for (int it = 0; it < TK * CPR / NT; ++it) {
      const int c = tid + it * NT, r = c / CPR, cc = c % CPR, i = t * TK + r;
      const bool valid = i < n;
      const int64_t row = valid ? k0 + (list ? int(list[i]) : i) : 0;
      const int off = swz<D>(r, cc);
      cp_async16(smem_u32(Ks + off), K + row * D + cc * 8, valid ? 16 : 0);
      cp_async16(smem_u32(Vs + off), V + row * D + cc * 8, valid ? 16 : 0);
    }
  };
#pragma unroll
  for (int t = 0; t < S - 1; ++t) {
    if (t < ntiles) load_tile(t, t);
    cp_async_commit();
  }
  const int q4 = lane & 3;
  const int mi = lane >> 3, rr = lane & 7;  // ldmatrix: lane supplies row rr of matrix mi
  for (int t = 0; t < ntiles; ++t) {
    const int ahead = t + S - 1;
    if (ahead < ntiles) load_tile(ahead, ahead % S);
    cp_async_commit();
    cp_async_wait<S - 1>();
    mma_threads_sync();
    const __nv_bfloat16* Ks = kvs + (t % S) * 2 * TK * D;
    const __nv_bfloat16* Vs = Ks + TK * D;
    const int kb = warp * 16, nv = n - t * TK - kb;  // this warp's first tile row, its valid keys
    if (nv > 0) {
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
      {
        // matrices: (keys 0-7, dims lo), (keys 0-7, dims hi), (keys 8-15, lo), (keys 8-15, hi) = b0,b1 of key
        // n-tile 0, then of n-tile 1
        const int key = kb + ((mi >> 1) << 3) + rr;
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {
          uint32_t b0, b1, b2, b3;
          ldmatrix_x4(smem_u32(Ks + swz<D>(key, kk * 2 + (mi & 1))), b0, b1, b2, b3);
          mma_bf16_16816(s[0], qa[kk], b0, b1);
          mma_bf16_16816(s[1], qa[kk], b2, b3);
        }
      }
      float x0 = -INFINITY, x1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool ok = nt * 8 + q4 * 2 + (e & 1) < nv;
          s[nt][e] = ok ? s[nt][e] * sl2 : -INFINITY;
          if (e < 2) x0 = fmaxf(x0, s[nt][e]);
          else x1 = fmaxf(x1, s[nt][e]);
        }
      x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 1));
      x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, 2));
      x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 1));
      x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, 2));
      // nv > 0: every row has a finite score in this tile, so the new maxima are finite.
      const float n0 = fmaxf(st.m0, x0), n1 = fmaxf(st.m1, x1);
      const float al0 = fast_exp2(st.m0 - n0), al1 = fast_exp2(st.m1 - n1);
      st.m0 = n0, st.m1 = n1;
      float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        s[nt][0] = fast_exp2(s[nt][0] - n0), s[nt][1] = fast_exp2(s[nt][1] - n0);
        s[nt][2] = fast_exp2(s[nt][2] - n1), s[nt][3] = fast_exp2(s[nt][3] - n1);
        ps0 += s[nt][0] + s[nt][1];
        ps1 += s[nt][2] + s[nt][3];
      }
      st.l0 = st.l0 * al0 + ps0;
      st.l1 = st.l1 * al1 + ps1;
#pragma unroll
      for (int i = 0; i < NO; ++i) st.o[i][0] *= al0, st.o[i][1] *= al0, st.o[i][2] *= al1, st.o[i][3] *= al1;
      const uint32_t pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]), pack_bf16(s[1][0], s[1][1]),
                              pack_bf16(s[1][2], s[1][3])};
      // matrices (trans): (keys 0-7, dims lo), (keys 8-15, lo), (keys 0-7, hi), (keys 8-15, hi) = b0,b1 of dim
      // n-tile 2*dp, then of 2*dp + 1. Rows past n are zero-filled and their p is 0.
      const int key = kb + ((mi & 1) << 3) + rr;
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(smem_u32(Vs + swz<D>(key, dp * 2 + (mi >> 1))), b0, b1, b2, b3);
        mma_bf16_16816(st.o[2 * dp], pa, b0, b1);
        mma_bf16_16816(st.o[2 * dp + 1], pa, b2, b3);
      }
    }
    mma_threads_sync();  // the next iteration's load overwrites this stage
  }
  cp_async_wait<0>();
}

// Merges the 4 warps' (m, l, O) into one partial per (query head, split): per row the block max, each warp's O
// rescaled into its own slice of the (now free) tile buffer smem, then summed per (row, dim) in a fixed order.
// part_ml gets m back in natural-log units, the unit the combine kernel shares with attend_v2_kernel.
template <int D>
__device__ __forceinline__ void write_partial(MmaAttendState<D>& st, float* red, float2 (*wml)[16], int G, int kvh,
                                              int split, int max_split, float* part_acc, float2* part_ml) {
  constexpr int NW = kMmaWarps, NT = kMmaThreads, NO = D / 8;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, q4 = lane & 3;
  float l0 = st.l0, l1 = st.l1;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  if (q4 == 0) {
    wml[warp][g] = make_float2(st.m0, l0);
    wml[warp][g + 8] = make_float2(st.m1, l1);
  }
  mma_threads_sync();
  {
    float M0 = -INFINITY, M1 = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M0 = fmaxf(M0, wml[w][g].x), M1 = fmaxf(M1, wml[w][g + 8].x);
    const float f0 = st.m0 == -INFINITY ? 0.f : fast_exp2(st.m0 - M0);
    const float f1 = st.m1 == -INFINITY ? 0.f : fast_exp2(st.m1 - M1);
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      const int d = i * 8 + q4 * 2;
      if (g < G)
        *reinterpret_cast<float2*>(&red[(warp * G + g) * D + d]) = make_float2(st.o[i][0] * f0, st.o[i][1] * f0);
      if (g + 8 < G)
        *reinterpret_cast<float2*>(&red[(warp * G + g + 8) * D + d]) = make_float2(st.o[i][2] * f1, st.o[i][3] * f1);
    }
  }
  mma_threads_sync();
  for (int i = tid; i < G * D / 4; i += NT) {
    const int h = i / (D / 4), d = (i % (D / 4)) * 4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < NW; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(&red[(w * G + h) * D + d]);
      acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
    }
    *reinterpret_cast<float4*>(part_acc + ((int64_t(kvh) * G + h) * max_split + split) * D + d) = acc;
  }
  if (tid < G) {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) M = fmaxf(M, wml[w][tid].x);
    float Ls = 0.f;
#pragma unroll
    for (int w = 0; w < NW; ++w)
      if (wml[w][tid].x != -INFINITY) Ls += wml[w][tid].y * fast_exp2(wml[w][tid].x - M);
    part_ml[(int64_t(kvh) * G + tid) * max_split + split] = make_float2(M * 0.6931471805599453f, Ls);
  }
}

// Shared memory of the mma attend kernel: S stages of K and V tiles, then the compacted candidate list.
constexpr size_t mma_smem_bytes(int D, int S) { return size_t(S) * 2 * kMmaTile * D * 2 + kRetChunkMax * 2; }

// grid (max_split, Hkv); block kMmaThreads; dynamic shared memory mma_smem_bytes(D, S); S tile stages (three blocks of
// two stages fit an SM's shared memory, two of three).
// Each thread block takes a chunk of candidate keys of one KV head for all G query heads and attends it
// (attend_rows). Retrieval chunks first wait for hist_kernel, test their bins against b* and compact the kept
// offsets once, before any K/V load; streaming and dense chunks are contiguous rows.
template <int D, int S>
__global__ void __launch_bounds__(kMmaThreads, S == 2 ? 3 : 2) attend_mma_kernel(
    const __grid_constant__ DecodeArgs a, const __nv_bfloat16* q, const __nv_bfloat16* kf, const __nv_bfloat16* vf,
    const __nv_bfloat16* kr, const __nv_bfloat16* vr, const uint16_t* bins, const int32_t* bstar_in,
    const float* hist, const float* forced_mass, float* part_acc, float2* part_ml, int32_t* selected_count) {
  constexpr int CAND = kRetChunkMax / kMmaThreads;  // candidates per thread in the select step
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* kvs = reinterpret_cast<__nv_bfloat16*>(smem);  // [stage][K, V][TK][D], swizzled rows
  uint16_t* list = reinterpret_cast<uint16_t*>(smem + S * 2 * kMmaTile * D * 2);  // [kRetChunkMax]
  __shared__ int warp_cnt[kMmaWarps];
  __shared__ int s_bstar;
  __shared__ float2 wml[kMmaWarps][16];

  const int kvh = blockIdx.y, split = blockIdx.x;
  const int kind = a.kind[kvh];
  const bool ret = kind == int(HeadKind::RETRIEVAL);
  if (a.attend_first) pdl_wait();  // the call's first kernel (no retrieval head): the caller's K/V first, as stats
  pdl_trigger();  // first, as in the index passes
  const HeadSplit hs = head_split_of(a, kvh, kv_length(a));
  if (split >= hs.nsplit) return;
  const int phase = ret ? kPhaseAttendRetrieval : kPhaseAttendOther;
  probe_start(a.timeline, phase);
  const int tid = threadIdx.x;
  const int G = a.G;
  const __nv_bfloat16 *K, *V;
  // Streaming: the valid ring slots are exactly 0 .. nkeys-1 (sinks, then the filled part of the window, in any
  // order: the softmax does not care which token sits in which slot).
  const int64_t nkeys = hs.nkeys;
  if (kind == int(HeadKind::STREAMING)) {
    K = kr + int64_t(a.slot[kvh]) * a.ring * D;
    V = vr + int64_t(a.slot[kvh]) * a.ring * D;
  } else {
    K = kf + int64_t(a.slot[kvh]) * a.cap * D;
    V = vf + int64_t(a.slot[kvh]) * a.cap * D;
  }
  const int64_t k0 = int64_t(split) * hs.chunk, k1 = min(nkeys, k0 + hs.chunk);
  int n = int(k1 - k0);  // keys this block attends (after compaction for retrieval)
  if (ret) {
    pdl_wait();  // b* (or the histogram) and bins come from hist_kernel
    probe_point(a.timeline, kPhaseAttendReleased);
    const int rs = a.rslot[kvh];
    uint16_t mb[CAND];
    load_candidate_bins<CAND>(bins + int64_t(rs) * a.cap + k0, n, mb);
    int bstar;
    if (a.bstar_in_attend) {
      bstar = cut_bin<kMmaThreads>(hist + int64_t(rs) * kDecodeBins, __ldcg(&forced_mass[rs]), a.top_p);
    } else {
      if (tid == 0) s_bstar = bstar_in[rs];
      __syncthreads();
      bstar = s_bstar;
    }
    n = compact_kept<kMmaThreads, CAND>(mb, bstar, list, warp_cnt);
    probe_point(a.timeline, kPhaseAttendCompacted);
    if (selected_count && tid == 0) atomicAdd(&selected_count[rs], n);
  }
  uint32_t qa[D / 16][4];
  load_q_fragments<D>(q + int64_t(kvh) * G * D, G, qa);
  MmaAttendState<D> st;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) st.o[i][0] = st.o[i][1] = st.o[i][2] = st.o[i][3] = 0.f;
  attend_rows<D, S>(K, V, k0, ret ? list : nullptr, n, qa, a.scale * 1.4426950408889634f, kvs, st);
  if (ret) probe_point(a.timeline, kPhaseAttendTilesDone);
  // Streaming and dense blocks never wait for the previous kernel (hist_kernel): it neither reads nor writes
  // anything they touch, and the partials they write were last read by the previous call's combine, which
  // finished before this call's stats_kernel passed its wait, and that was before they launched. Waiting here held
  // their slots (68 KB of shared memory each) until the retrieval passes ended. The chain stays transitive through
  // the retrieval blocks, which wait above; without a retrieval head the attend is the call's first kernel and every
  // block waits at its start.
  write_partial<D>(st, reinterpret_cast<float*>(smem), wml, G, kvh, split, a.max_split, part_acc, part_ml);
  probe_end(a.timeline, phase);
}



// grid (Hq, D / kCombineDims), block 256: a block merges kCombineDims dims of one query head; threads are (split
// group, 4 dims); each group walks every SG-th split, then the groups are summed in shared memory. One thread per
// dim walking all splits (two versions before) was a serial chain of nsplit L2 round trips; one block per head
// with all D dims (the version before) was 32 blocks on 132 SMs, 8.3 us at 128K (ncu).
constexpr int kCombineDims = 32;
template <int D>
__global__ void __launch_bounds__(256) combine_kernel(const __grid_constant__ DecodeArgs a, const float* part_acc,
                                                      const float2* part_ml, __nv_bfloat16* o) {
  static_assert(D % kCombineDims == 0, "dims per combine block");
  constexpr int COLS = kCombineDims / 4, SG = 256 / COLS;
  const int d0 = int(blockIdx.y) * kCombineDims;
  __shared__ float4 accs[SG][COLS];
  __shared__ float ls[SG];
  __shared__ float wmax[8];
  const int h = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  probe_start(a.timeline, kPhaseCombine);
  pdl_trigger();
  // The split count depends on the arguments and the length alone (written before the call's first kernel): found
  // while the attend runs, not after it.
  const int ns = head_split_of(a, h / a.G, kv_length(a)).nsplit;
  pdl_wait();  // part_acc / part_ml come from attend
  const float2* ml = part_ml + int64_t(h) * a.max_split;
  const int col = tid % COLS, grp = tid / COLS;
  // Loads of U splits are issued before any is used: the rolled loop (with its skip of empty splits) was a chain
  // of ~ns / SG L2 round trips per group. The first batch (every split up to SG * U = 256) is loaded before the
  // max over the splits is known: its loads no longer wait for that reduction's round trip. An empty split
  // (m = -inf) has acc = 0 and gets weight 0.
  constexpr int U = 8;
  float2 m[U];
  float4 v[U];
  auto load_batch = [&](int s0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int s = s0 + u * SG;
      if (s < ns) {
        m[u] = ml[s];
        v[u] = *reinterpret_cast<const float4*>(part_acc + (int64_t(h) * a.max_split + s) * D + d0 + col * 4);
      } else {
        m[u] = make_float2(-INFINITY, 0.f);
        v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  };
  load_batch(grp);
  float M = -INFINITY;
#pragma unroll
  for (int u = 0; u < U; ++u) M = fmaxf(M, m[u].x);
  for (int s = SG * U + tid; s < ns; s += 256) M = fmaxf(M, ml[s].x);
  M = warp_max(M);
  if (lane == 0) wmax[warp] = M;
  __syncthreads();
  M = wmax[0];
#pragma unroll
  for (int w = 1; w < 8; ++w) M = fmaxf(M, wmax[w]);
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float l = 0.f;
  for (int s0 = grp;;) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float w = m[u].x == -INFINITY ? 0.f : __expf(m[u].x - M);
      l = fmaf(m[u].y, w, l);
      acc.x = fmaf(v[u].x, w, acc.x), acc.y = fmaf(v[u].y, w, acc.y);
      acc.z = fmaf(v[u].z, w, acc.z), acc.w = fmaf(v[u].w, w, acc.w);
    }
    s0 += SG * U;
    if (s0 >= ns) break;
    load_batch(s0);
  }
  accs[grp][col] = acc;
  if (col == 0) ls[grp] = l;
  __syncthreads();
  if (tid < COLS) {
    float4 r = make_float4(0.f, 0.f, 0.f, 0.f);
    float L = 0.f;
#pragma unroll
    for (int g = 0; g < SG; ++g) {
      const float4 v = accs[g][tid];
      r.x += v.x, r.y += v.y, r.z += v.z, r.w += v.w;
      L += ls[g];
    }
    const float inv = L > 0.f ? 1.f / L : 0.f;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(o + int64_t(h) * D + d0 + tid * 4);
    dst[0] = __floats2bfloat162_rn(r.x * inv, r.y * inv);
    dst[1] = __floats2bfloat162_rn(r.z * inv, r.w * inv);
  }
  probe_end(a.timeline, kPhaseCombine);
}

}  // namespace

namespace {

// The launch geometry and the workspace layout of one decode call. With SparseDecodeParams::position the grids and
// the workspace are sized for every length up to kv_len (the kernels find their own splits at the length they read).
struct DecodePlan {
  DecodeArgs a{};
  int R = 0, stat_blocks = 0, hist_blocks = 0;
  bool v2 = false;
  size_t n_acc = 0, n_ml = 0, n_stats = 0, n_hist = 0, n_bins = 0;
  static size_t al(size_t x) { return (x + 255) / 256 * 256; }
  size_t total() const { return al(n_acc) + al(n_ml) + al(n_stats) + al(n_hist) + al(n_bins); }
};

DecodePlan plan_decode(const SparseDecodeParams& p) {
  DecodePlan plan;
  plan.v2 = p.tuning.v2_attend;
  DecodeArgs& a = plan.a;
  a.G = p.num_q_heads / p.num_kv_heads;
  a.D = p.head_dim;
  a.L = p.kv_len;
  a.position = p.position;
  a.splits.streaming_keys_per_block = p.tuning.streaming_keys_per_block;
  a.splits.retrieval_candidates_per_block = p.tuning.retrieval_candidates_per_block;
  a.splits.dense_keys_per_block = p.tuning.dense_keys_per_block;
  a.splits.index_tokens_per_block = p.tuning.index_tokens_per_block;
  a.splits.hist_tokens_per_block = p.tuning.hist_tokens_per_block;
  a.splits.v2_attend = plan.v2;
  a.cap = p.cap_full;
  a.ring = p.sink + p.window;
  a.sink = p.sink;
  a.window = p.window;
  a.keep_first = p.keep_first;
  a.keep_last = p.keep_last;
  a.scale = p.scale > 0 ? p.scale : 1.f / std::sqrt(float(p.head_dim));
  a.top_p = p.top_p;
  a.timeline = p.tuning.timeline;
  a.bstar_in_attend = !plan.v2 && p.tuning.bstar_in_attend;
  a.shared_carveout = p.tuning.shared_carveout;
  int nfull = 0, nstr = 0, R = 0;
  a.max_split = 1;
  for (int g = 0; g < p.num_kv_heads; ++g) {
    const HeadKind k = p.head_kind[g];
    a.kind[g] = int8_t(k);
    if (k == HeadKind::RETRIEVAL) a.ret_kvh[R] = int8_t(g);
    a.rslot[g] = int8_t(k == HeadKind::RETRIEVAL ? R++ : -1);
    a.slot[g] = int8_t(k == HeadKind::STREAMING ? nstr++ : nfull++);
    const int n = p.position ? max_head_splits(k, p.kv_len, p.sink, p.window, a.splits)
                             : head_split(k, p.kv_len, p.sink, p.window, a.splits).nsplit;
    a.max_split = std::max(a.max_split, n);
  }
  const int Hq = p.num_q_heads;
  plan.R = R;
  a.attend_first = R == 0;
  const IndexSplit is = p.position ? max_index_split(p.kv_len, a.splits) : index_split(p.kv_len, a.splits);
  plan.stat_blocks = is.nstats;
  plan.hist_blocks = is.nhist;
  // one workspace: part_acc | part_ml | stats | hist | forced | bins
  plan.n_acc = size_t(Hq) * a.max_split * p.head_dim * 4;
  plan.n_ml = size_t(Hq) * a.max_split * 8;
  plan.n_stats = size_t(std::max(R, 1)) * plan.stat_blocks * a.G * 8;
  plan.n_hist = size_t(std::max(R, 1)) * (kDecodeBins + 3) * 4;  // hist, then forced, b*, done per slot
  plan.n_bins = size_t(std::max(R, 1)) * p.cap_full * 2;
  return plan;
}

constexpr int kMaxDevices = 64;

// Sets kern's preferred shared-memory carveout (DecodeTuning::shared_carveout) on the current device when it
// differs from what was set there last; a driver call per launch would cost more than some of the kernels.
cudaError_t apply_carveout(const void* kern, int percent) {
  static std::mutex mu;
  static std::vector<std::tuple<const void*, int, int>> applied;  // (kernel, device, percent)
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [f, d, pct] : applied)
    if (f == kern && d == dev) {
      if (pct == percent) return cudaSuccess;
      e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, percent);
      if (e == cudaSuccess) pct = percent;
      return e;
    }
  e = cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout, percent);
  if (e == cudaSuccess) applied.emplace_back(kern, dev, percent);
  return e;
}

template <int D, int S>
cudaError_t launch_attend_mma(dim3 grid, cudaStream_t stream, bool pdl, const DecodeArgs& a, const __nv_bfloat16* q,
                              const __nv_bfloat16* kf, const __nv_bfloat16* vf, const __nv_bfloat16* kr,
                              const __nv_bfloat16* vr, const uint16_t* bins, const int32_t* bstar,
                              const float* hist, const float* forced, float* part_acc, float2* part_ml,
                              int32_t* selected_count) {
  // The shared-memory opt-in is per device; done once per device (FlashAttention sets it on every launch).
  static bool done[kMaxDevices] = {};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= kMaxDevices || !done[dev]) {
    e = cudaFuncSetAttribute(attend_mma_kernel<D, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(mma_smem_bytes(D, S)));
    if (e != cudaSuccess) return e;
    if (dev < kMaxDevices) done[dev] = true;
  }
  e = apply_carveout(reinterpret_cast<const void*>(attend_mma_kernel<D, S>), a.shared_carveout);
  if (e != cudaSuccess) return e;
  return launch_k(attend_mma_kernel<D, S>, grid, dim3(kMmaThreads), mma_smem_bytes(D, S), stream, pdl, a, q, kf, vf, kr, vr,
                  bins, bstar, hist, forced, part_acc, part_ml, selected_count);
}

}  // namespace

size_t sparse_decode_workspace_bytes(const SparseDecodeParams& p) {
  if (*check_sparse_decode_params(p, true)) return 0;
  return plan_decode(p).total();
}

cudaError_t sparse_decode_cuda(const SparseDecodeParams& p, cudaStream_t stream) {
  if (*check_sparse_decode_params(p, true)) return cudaErrorInvalidValue;
  const int cc_major = current_device_cc_major();
  const bool pdl = p.tuning.programmatic_launch && cc_major >= 9;  // the launch attribute needs Hopper or later
  const bool bf16_index = p.index_dtype == DType::BF16;
  const DecodePlan plan = plan_decode(p);
  const DecodeArgs& a = plan.a;
  const int R = plan.R;
  const size_t n_acc = plan.n_acc, n_ml = plan.n_ml, n_stats = plan.n_stats, n_hist = plan.n_hist;
  auto al = DecodePlan::al;
  const size_t total = plan.total();
  // A caller-owned workspace (e.g. from the framework's caching allocator) avoids an allocation per token: with
  // the default pool's release threshold, cudaMallocAsync/cudaFreeAsync went to the driver on every call.
  char* ws = static_cast<char*>(p.workspace);
  const bool own = ws == nullptr;
  if (!own && p.workspace_bytes < total) return cudaErrorInvalidValue;
  cudaError_t e = own ? cudaMallocAsync(&ws, total, stream) : cudaSuccess;
  if (e != cudaSuccess) return e;
  float* part_acc = reinterpret_cast<float*>(ws);
  float2* part_ml = reinterpret_cast<float2*>(ws + al(n_acc));
  float2* stats = reinterpret_cast<float2*>(ws + al(n_acc) + al(n_ml));
  float* hist = reinterpret_cast<float*>(ws + al(n_acc) + al(n_ml) + al(n_stats));
  const size_t nr = size_t(std::max(R, 1));
  float* forced = hist + nr * kDecodeBins;
  int32_t* bstar = reinterpret_cast<int32_t*>(forced + nr);
  uint32_t* done = reinterpret_cast<uint32_t*>(bstar + nr);
  uint16_t* bins = reinterpret_cast<uint16_t*>(ws + al(n_acc) + al(n_ml) + al(n_stats) + al(n_hist));
  auto qb = static_cast<const __nv_bfloat16*>(p.q);
  auto kf = static_cast<const __nv_bfloat16*>(p.k_full);
  auto vf = static_cast<const __nv_bfloat16*>(p.v_full);
  auto kr = static_cast<const __nv_bfloat16*>(p.k_ring);
  auto vr = static_cast<const __nv_bfloat16*>(p.v_ring);
  if (R > 0) {
    const dim3 g(plan.stat_blocks, R);
    const dim3 gh(plan.hist_blocks, R);
    const bool vec = reinterpret_cast<uintptr_t>(p.index_k) % 16 == 0;
    auto launch = [&](auto* iq, auto* ik) {
      using IT = std::remove_const_t<std::remove_pointer_t<decltype(iq)>>;
      const bool one_row = (p.tuning.index_rows_per_thread > 0 ? p.tuning.index_rows_per_thread : kDefaultRows) == 1;
      auto stats_k = a.G <= 8 ? (one_row ? stats_kernel<IT, 8, 1> : stats_kernel<IT, 8, 2>)
                              : (one_row ? stats_kernel<IT, kMaxG, 1> : stats_kernel<IT, kMaxG, 2>);
      auto hist_k = a.G <= 8 ? (one_row ? hist_kernel<IT, 8, 1> : hist_kernel<IT, 8, 2>)
                             : (one_row ? hist_kernel<IT, kMaxG, 1> : hist_kernel<IT, kMaxG, 2>);
      cudaError_t err = apply_carveout(reinterpret_cast<const void*>(stats_k), a.shared_carveout);
      if (err == cudaSuccess) err = apply_carveout(reinterpret_cast<const void*>(hist_k), a.shared_carveout);
      if (err != cudaSuccess) return err;
      err = launch_k(stats_k, g, dim3(256), 0, stream, pdl, iq, ik, stats, hist, forced, done,
                     p.selected_count, a.G, p.kv_len, p.position, a.splits, p.cap_full, vec, a.timeline);
      if (err == cudaSuccess)
        err = launch_k(hist_k, gh, dim3(256), 0, stream, pdl, iq, ik, stats, bins, hist, forced, done, bstar, a.G,
                       p.kv_len, p.position, a.splits, p.cap_full, p.keep_first, p.keep_last, p.top_p, vec,
                       !a.bstar_in_attend, a.timeline);
      return err;
    };
    // Tensor-core scores: bf16 index rows that allow 4-byte fragment loads (always, for torch allocations).
    auto launch_mma = [&](auto stats_k, auto hist_k) {
      auto iq = static_cast<const __nv_bfloat16*>(p.index_q);
      auto ik = static_cast<const __nv_bfloat16*>(p.index_k);
      cudaError_t err = apply_carveout(reinterpret_cast<const void*>(stats_k), a.shared_carveout);
      if (err == cudaSuccess) err = apply_carveout(reinterpret_cast<const void*>(hist_k), a.shared_carveout);
      if (err != cudaSuccess) return err;
      err = launch_k(stats_k, g, dim3(256), 0, stream, pdl, iq, ik, stats, hist, forced, done, p.selected_count, a.G,
                     p.kv_len, p.position, a.splits, p.cap_full, a.timeline);
      if (err == cudaSuccess)
        err = launch_k(hist_k, gh, dim3(kHistThreads), 0, stream, pdl, iq, ik, stats, bins, hist, forced, done, bstar,
                       a.G, p.kv_len, p.position, a.splits, p.cap_full, p.keep_first, p.keep_last, p.top_p,
                       !a.bstar_in_attend, a.timeline);
      return err;
    };
    if (bf16_index && vec && p.tuning.index_tensor_cores && cc_major >= 8)
      e = a.G <= 8 ? launch_mma(stats_mma_kernel<1>, hist_mma_kernel<1>) : launch_mma(stats_mma_kernel<2>, hist_mma_kernel<2>);
    else
      e = bf16_index ? launch(static_cast<const __nv_bfloat16*>(p.index_q), static_cast<const __nv_bfloat16*>(p.index_k))
                     : launch(static_cast<const float*>(p.index_q), static_cast<const float*>(p.index_k));
  }
  if (e == cudaSuccess) {
    if (plan.v2) {
      const dim3 g(a.max_split, p.num_kv_heads);
      // 64-key tiles; 32 with 16 query heads per KV head (shared memory stays under the 48 KB static limit).
      auto kern = p.head_dim == 128 ? (a.G <= 8 ? attend_v2_kernel<128, 8, 64> : attend_v2_kernel<128, 16, 32>)
                                    : (a.G <= 8 ? attend_v2_kernel<64, 8, 64> : attend_v2_kernel<64, 16, 32>);
      kern<<<g, kAttnThreads, 0, stream>>>(a, qb, kf, vf, kr, vr, bins, bstar, part_acc, part_ml,
                                           p.selected_count);
      e = cudaGetLastError();
    } else {
      const dim3 g(a.max_split, p.num_kv_heads);
      // Two stages by default: three made a call with a retrieval head 1-2% faster alone on an H100 and a dense-only
      // 0.6B call at 32K 1.4% slower (docs/decode.md "Three K/V tile stages"); the whole step is not yet measured.
      const bool three = p.tuning.attend_tile_stages == 3;
      auto launch_attend = p.head_dim == 128 ? (three ? launch_attend_mma<128, 3> : launch_attend_mma<128, kMmaStages>)
                                             : (three ? launch_attend_mma<64, 3> : launch_attend_mma<64, kMmaStages>);
      e = launch_attend(
          g, stream, pdl, a, qb, kf, vf, kr, vr, bins, bstar, hist, forced, part_acc, part_ml,
          p.selected_count);
    }
  }
  if (e == cudaSuccess) {
    auto out = static_cast<__nv_bfloat16*>(p.o);
    auto combine = p.head_dim == 128 ? combine_kernel<128> : combine_kernel<64>;
    e = apply_carveout(reinterpret_cast<const void*>(combine), a.shared_carveout);
    if (e == cudaSuccess)
      e = launch_k(combine,
                 dim3(p.num_q_heads, p.head_dim / kCombineDims), dim3(256), 0, stream, pdl, a,
                 static_cast<const float*>(part_acc), static_cast<const float2*>(part_ml), out);
  }
  const cudaError_t e2 = own ? cudaFreeAsync(ws, stream) : cudaSuccess;
  return e != cudaSuccess ? e : e2;
}

}  // namespace rtp::kernels
