// Prefill block selection on the GPU (definition in sparse_attention_params.h):
//   1. pool:    qbar[r][b][s][h] = mean of index_q over sub-block s of the query block (bf16 for the tensor
//               cores); S = query_sub_blocks sub-blocks, S = 1 the whole block
//   2. logits:  L[row = (b, s, h)][c] = max(max_j u, mean_j u + log n_c), u = qbar . index_k[j] / 4: the max
//               by one mma.sync m16n8k16 per 16 rows x 8 keys (the index dimension is exactly one k-step), the
//               mean as qbar . (the block's mean key) by one mma per 16 rows x 8 key blocks; rows are processed
//               in chunks of query blocks so the logit workspace stays bounded
// Chunked prefill (q_offset > 0, a multiple of the block size): index_q holds the chunk's queries, so its
// blocks are the query blocks qb0 = q_offset / B onwards; rows and lists are indexed locally from qb0 and the
// block numbers that rule causality and the forced blocks are absolute.
//               the logits kernel also writes each row's softmax partials (max, sum of exp) per key split, so that
//               top-p needs one pass over the logits instead of three
//   3. top-p:   one thread block per (r, b): per-row softmax over blocks, mean (or renormalised max: the
//               sub_block_aggregate) over the non-empty sub-blocks and the heads, forced blocks, threshold
//               bisection on P (sort-free), capped count, ascending compaction.
// The logits kernel sees the S sub-blocks of a query block as S * G rows of that block (as if the group had
// S * G heads), so its row -> query block mapping and causality are those of S = 1 with G replaced by S * G.
#include <cuda_bf16.h>

#include <cmath>

#include "cuda_common.cuh"
#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels {
namespace {
using namespace cuda_detail;

template <typename T>
__global__ void to_bf16_kernel(const T* in, __nv_bfloat16* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16(to_float(in[i]));
}

// qbar [R][nb][S][G][16] bf16 (row = (b*S + s)*G + h); one thread per (r, b, s, h, d). A sub-block with no
// token < T (the tail of the last block) gets 0 instead of 0/0: its logits are computed but never read.
template <typename T>
__global__ void pool_kernel(const T* iq, __nv_bfloat16* qbar, int R, int G, int S, int64_t T_, int B, int nb) {
  const int64_t n = int64_t(R) * nb * S * G * kIndexDim;
  const int sb = B / S;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int d = idx % kIndexDim;
    const int h = (idx / kIndexDim) % G;
    const int s = (idx / (int64_t(kIndexDim) * G)) % S;
    const int64_t b = (idx / (int64_t(kIndexDim) * G * S)) % nb;
    const int r = int(idx / (int64_t(kIndexDim) * G * S * nb));
    const int64_t i0 = b * B + int64_t(s) * sb, i1 = min(T_, i0 + sb);
    const T* src = iq + ((int64_t(r) * G + h) * T_) * kIndexDim + d;
    float acc = 0.f;
    for (int64_t i = i0; i < i1; ++i) acc += to_float(src[i * kIndexDim]);
    qbar[idx] = __float2bfloat16(i1 > i0 ? acc / float(i1 - i0) : 0.f);
  }
}

constexpr int kKeyBlocksPerSplit = 32;  // 2048-4096 keys per thread block of logits_kernel
constexpr int kLogitGroup = 8;          // key blocks per group: one n-tile of the mean-term mma
static_assert(kKeyBlocksPerSplit % kLogitGroup == 0, "a split is whole groups");

// kmean [R][nb][2][16] bf16: the mean of key block c's keys j < T in fp32, split into a bf16 head and the bf16
// rounding of the rest (head + rest carries ~16 bits more than bf16). One thread per (c, dim); blockIdx.y = slot.
__global__ void block_mean_keys_kernel(const __nv_bfloat16* ik, __nv_bfloat16* kmean, int64_t T_, int B, int nb) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(nb) * kIndexDim) return;
  ik += int64_t(blockIdx.y) * T_ * kIndexDim;
  kmean += int64_t(blockIdx.y) * nb * 2 * kIndexDim;
  const int64_t c = idx / kIndexDim;
  const int d = int(idx % kIndexDim);
  const int64_t k0 = c * B, k1 = min(T_, k0 + B);
  float acc = 0.f;
  for (int64_t j = k0; j < k1; ++j) acc += __bfloat162float(ik[j * kIndexDim + d]);
  const float mean = acc / float(k1 - k0);
  const __nv_bfloat16 head = __float2bfloat16(mean);
  kmean[(c * 2) * kIndexDim + d] = head;
  kmean[(c * 2 + 1) * kIndexDim + d] = __float2bfloat16(mean - __bfloat162float(head));
}

// Shared memory of logits_kernel: two stages of one group's keys (kLogitGroup * B rows of 32 bytes).
constexpr size_t logits_smem_bytes(int B) { return size_t(2) * kLogitGroup * B * kIndexDim * 2; }

// Byte offset of 16-byte half h of key row k in a stage: the half index is XORed with bit 2 of the row so that the
// 8 rows an ldmatrix reads (32 bytes apart) fall in 8 distinct bank groups.
__device__ __forceinline__ uint32_t key_tile_offset(int k, int h) { return uint32_t(k) * 32u + uint32_t((h ^ ((k >> 2) & 1)) * 16); }

// Block logits for rows [row0, row0 + nrows) of slot r; L[(row - row0) * nb + c]. 8 warps x 16 rows.
// part[(row - row0) * nsp + y] = the SoftmaxPartial of the row's logits in key split y (written for every split
// that holds at least one of the row's causal blocks; the top-p kernel reads no other).
// L = max(max_j u, mean_j u + log n_c) of sparse_attention_params.h, u = qbar . k_j / 4:
//   max:  one mma.m16n8k16 per 16 rows x 8 keys (the index dimension is exactly one k-step), a running max per
//         row; the thread block stages each group of kLogitGroup key blocks in shared memory once for its 8 warps
//         (cp.async, double-buffered) and the warps read B fragments with ldmatrix (each warp loading every key
//         fragment itself from L1 was most of the kernel's issue slots and load latency)
//   mean: qbar . (mean key of block c): one mma per 16 rows x 8 key blocks against kmean (head, then rest), instead
//         of a sum over the 64 scores of every block (one FADD per score)
// BK = block size (64 or 128 keys). G = rows per query block (S * group size).
// grid (row tiles of 128, key splits): thread block (x, y) does key blocks [y * kb_split, (y + 1) * kb_split). One
// row tile walking every key block left the GPU idle: the work grows as nb^2, the row tiles only as nb (32 thread
// blocks at 32K tokens, 1.06 ms, 0.06 waves: ncu, H200).
template <int BK>
__global__ void __launch_bounds__(256, 3) logits_kernel(const __nv_bfloat16* qbar, const __nv_bfloat16* ik,
                                                     const __nv_bfloat16* kmean, float* L, float2* part, int nsp,
                                                     int G, int64_t T_, int nb, int64_t row0, int64_t nrows,
                                                     int64_t rows_total, int64_t qb0, int kb_split) {
  extern __shared__ __align__(128) uint8_t key_stage[];
  constexpr int kStageBytes = kLogitGroup * BK * 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t tile_row = row0 + int64_t(blockIdx.x) * 128;
  const int64_t wrow = tile_row + warp * 16;  // first global row of this warp
  // The block stages keys up to its last row's query block; each warp computes up to its own.
  const int64_t blk_last = qb0 + (min(tile_row + 127, row0 + nrows - 1)) / G;
  const int64_t c_begin = int64_t(blockIdx.y) * kb_split;
  const int64_t c_split_end = c_begin + kb_split - 1;
  const int64_t c_end_blk = min(blk_last, c_split_end);
  if (c_begin > c_end_blk) return;  // the whole block: nothing of this split is causal for its rows
  const bool active = wrow < row0 + nrows;
  const int64_t c_end = active ? min(qb0 + min(wrow + 15, row0 + nrows - 1) / G, c_split_end) : -1;
  // A fragment: rows wrow + g (+8), dims 2t4.. (+8)
  uint32_t af[4];
  {
    const int64_t ra = min(wrow + g, rows_total - 1), rb = min(wrow + g + 8, rows_total - 1);
    const uint32_t* pa = reinterpret_cast<const uint32_t*>(qbar + ra * kIndexDim);
    const uint32_t* pb = reinterpret_cast<const uint32_t*>(qbar + rb * kIndexDim);
    af[0] = pa[t4];
    af[1] = pb[t4];
    af[2] = pa[t4 + 4];
    af[3] = pb[t4 + 4];
  }
  const int64_t b_r0 = qb0 + (wrow + g) / G, b_r1 = qb0 + (wrow + g + 8) / G;
  const int64_t lr0 = wrow + g - row0, lr1 = wrow + g + 8 - row0;
  const uint32_t stage0 = smem_u32(key_stage);
  // Group gi = key blocks [c_begin + 8 gi, +8): its 8 * BK key rows (clamped to T - 1: rows past T are only ever
  // read by the checked path, which ignores them) into stage gi & 1.
  auto load_group = [&](int64_t cg, int stage) {
    constexpr int kChunks = kLogitGroup * BK * 2;  // 16-byte halves
#pragma unroll
    for (int i = 0; i < kChunks / 256; ++i) {
      const int q = int(threadIdx.x) + i * 256, k = q >> 1, h = q & 1;
      const int64_t key = min(cg * BK + k, T_ - 1);
      cp_async16(stage0 + uint32_t(stage * kStageBytes) + key_tile_offset(k, h), ik + key * kIndexDim + h * 8, 16);
    }
  };
  const int ngroups = int((c_end_blk - c_begin) / kLogitGroup) + 1;
  load_group(c_begin, 0);
  cp_async_commit();
  // ldmatrix row address of this lane within a 16-key pair of n-tiles: matrix lane / 8 = (n-tile lane / 16,
  // half (lane / 8) % 2), row lane % 8.
  const int lm_key = (lane / 16) * 8 + (lane % 8), lm_half = (lane / 8) % 2;
  SoftmaxPartial sp0, sp1;  // this lane's share of rows g and g + 8
  for (int gi = 0; gi < ngroups; ++gi) {
    const int64_t cg = c_begin + int64_t(gi) * kLogitGroup;
    if (gi + 1 < ngroups) load_group(cg + kLogitGroup, (gi + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (cg <= c_end) {
      const uint32_t sbase = stage0 + uint32_t((gi & 1) * kStageBytes);
      // This lane's share of the group's block maxima: blocks cg + 2 t4 + {0, 1}, rows g and g + 8.
      float M0[2] = {-INFINITY, -INFINITY}, M1[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int ci = 0; ci < kLogitGroup; ++ci) {
        const int64_t c = cg + ci;
        if (c > c_end) break;
        const int64_t k0 = c * BK;
        const bool full = k0 + BK <= T_;
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int np = 0; np < BK / 16; ++np) {  // pairs of 8-key n-tiles
          uint32_t b0a, b1a, b0b, b1b;
          const int kl = ci * BK + np * 16 + lm_key;
          ldmatrix_x4(sbase + key_tile_offset(kl, lm_half), b0a, b1a, b0b, b1b);
          float d[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
          mma_bf16_16816(d[0], af, b0a, b1a);
          mma_bf16_16816(d[1], af, b0b, b1b);
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            if (full) {
              mx0 = fmaxf(mx0, fmaxf(d[hh][0], d[hh][1]));
              mx1 = fmaxf(mx1, fmaxf(d[hh][2], d[hh][3]));
              continue;
            }
            const int64_t kc = k0 + np * 16 + hh * 8 + 2 * t4;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const bool ok = kc + (e & 1) < T_;
              if (e < 2) mx0 = ok ? fmaxf(mx0, d[hh][e]) : mx0;
              else mx1 = ok ? fmaxf(mx1, d[hh][e]) : mx1;
            }
          }
        }
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
          mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
        }
        if ((ci >> 1) == t4) {
          M0[ci & 1] = mx0;
          M1[ci & 1] = mx1;
        }
      }
      // Mean term of the group: n-tile column g = key block cg + g (clamped; past nb it is never written).
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      {
        const int64_t cm = min(cg + g, int64_t(nb) - 1);
        const uint32_t* ph = reinterpret_cast<const uint32_t*>(kmean + (cm * 2) * kIndexDim);
        const uint32_t* pl = reinterpret_cast<const uint32_t*>(kmean + (cm * 2 + 1) * kIndexDim);
        mma_bf16_16816(d, af, __ldg(ph + t4), __ldg(ph + t4 + 4));
        mma_bf16_16816(d, af, __ldg(pl + t4), __ldg(pl + t4 + 4));
      }
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int64_t c = cg + 2 * t4 + k;
        if (c > c_end) continue;
        const float ln = logf(float(min(T_, c * BK + BK) - c * BK));
        // The 1/sqrt(16) scale is applied to the max and the mean once (a power of two: exact).
        if (lr0 < nrows && c <= b_r0) {
          const float v = fmaxf(M0[k] * 0.25f, d[k] * 0.25f + ln);
          L[lr0 * nb + c] = v;
          sp0.add(v);
        }
        if (lr1 < nrows && c <= b_r1) {
          const float v = fmaxf(M1[k] * 0.25f, d[2 + k] * 0.25f + ln);
          L[lr1 * nb + c] = v;
          sp1.add(v);
        }
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }
  if (!active) return;
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {  // the quad's four lanes hold the same two rows
    sp0.merge(make_float2(__shfl_xor_sync(0xffffffffu, sp0.m, o), __shfl_xor_sync(0xffffffffu, sp0.s, o)));
    sp1.merge(make_float2(__shfl_xor_sync(0xffffffffu, sp1.m, o), __shfl_xor_sync(0xffffffffu, sp1.s, o)));
  }
  if (t4 == 0) {
    if (lr0 < nrows) part[lr0 * nsp + blockIdx.y] = make_float2(sp0.m, sp0.s);
    if (lr1 < nrows) part[lr1 * nsp + blockIdx.y] = make_float2(sp1.m, sp1.s);
  }
}

// The top-p kernel's block: its reductions loop over a compile-time warp count.
constexpr int kTopPThreads = 256;
constexpr int kTopPWarps = kTopPThreads / 32;

__device__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int w = 0; w < kTopPWarps; ++w) s += red[w];
  return s;
}
__device__ float block_max(float v, float* red) {
  v = warp_max(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = -INFINITY;
#pragma unroll
  for (int w = 0; w < kTopPWarps; ++w) s = fmaxf(s, red[w]);
  return s;
}

// Per-row max and sum over the warps of a block for kRowBatch rows at once, each row reduced exactly as block_max /
// block_sum reduce one value (xor tree in the warp, then the warps in order), so the results are those of the
// one-row helpers to the bit. red: kRowBatch * 32 floats.
constexpr int kRowBatch = 8;
template <bool kMax>
__device__ void block_reduce_rows(float (&v)[kRowBatch], float* red) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < kRowBatch; ++k) v[k] = kMax ? warp_max(v[k]) : warp_sum(v[k]);
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) red[k * 32 + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kRowBatch; ++k) {
    float s = kMax ? -INFINITY : 0.f;
#pragma unroll
    for (int w = 0; w < kTopPWarps; ++w) s = kMax ? fmaxf(s, red[k * 32 + w]) : s + red[k * 32 + w];
    v[k] = s;
  }
}

// One thread block per (local) query block lb in [b0, b0 + nbc) of slot r, absolute block b = qb0 + lb.
// L holds S * G rows per query block, sub-block-major; only the first ns sub-blocks (those with a token < T,
// Tq = the call's query count) are averaged. Dynamic smem: P[nb] floats.
// A row's softmax normaliser comes from the logits kernel's partials (part, nsp per row, kb_split key blocks per
// split): the logits are read once, for P. They come from DRAM (a chunk's are up to 512 MB), and the three passes
// before (max, sum of exp, P) were most of the kernel's time. The rows are read kRowBatch at a time: one row per
// pass kept one load in flight per thread (ncu, late 1M chunk: 2.06 ms, 6.7 long-scoreboard stalls per issued
// instruction).
// kAggMax: BlockAggregate::MAX (P = per-block max over the rows' distributions, renormalised), else MEAN.
template <bool kAggMax>
__global__ void __launch_bounds__(kTopPThreads) topp_kernel(const float* L, const float2* part, int nsp, int kb_split,
                                                   int32_t* counts, int32_t* indices, int G, int S, int B, int64_t Tq,
                                                   int nb, int64_t b0, int64_t qb0, int local_blocks, int max_blocks,
                                                   float top_p) {
  extern __shared__ float P[];
  __shared__ float red[32];
  __shared__ float red_rows[kRowBatch * 32];
  __shared__ int wcount[32];
  const int64_t lb = b0 + blockIdx.x;
  const int64_t b = qb0 + lb;
  const int n = int(b) + 1;
  const int tid = threadIdx.x;
  // This thread's columns are c = tid + i * kTopPThreads, i < mine. A trip count known before a loop lets the
  // unrolled loops below issue their loads together instead of one exit test and one load latency per column.
  const int mine = tid < n ? (n - 1 - tid) / kTopPThreads + 1 : 0;
  for (int c = tid; c < n; c += kTopPThreads) P[c] = 0.f;
  const int sb = B / S;
  const int ns = int((min(Tq, (lb + 1) * B) - lb * B + sb - 1) / sb);
  // rows (s, h) with s < ns are the first ns * G rows of the block; S = 1 is the one-pooled-query loop over h.
  const int nrows = ns * G;
  const float wscale = float(nrows);
  for (int h0 = 0; h0 < nrows; h0 += kRowBatch) {
    const int nr = min(kRowBatch, nrows - h0);
    const int64_t lrow = int64_t(blockIdx.x) * S * G + h0;
    const float* rows = L + lrow * nb;
    // The row's splits 0 .. b / kb_split hold its causal blocks [0, b].
    const int nsp_b = int(b / kb_split) + 1;
    float mx[kRowBatch], z[kRowBatch];
    {
      SoftmaxPartial acc[kRowBatch];
      for (int y = tid; y < nsp_b; y += kTopPThreads)
#pragma unroll
        for (int k = 0; k < kRowBatch; ++k)
          if (k < nr) {
            acc[k].merge(part[(lrow + k) * nsp + y]);
          }
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k) mx[k] = acc[k].m;
      block_reduce_rows<true>(mx, red_rows);
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k) z[k] = acc[k].m == -INFINITY ? 0.f : acc[k].s * __expf(acc[k].m - mx[k]);
      block_reduce_rows<false>(z, red_rows);
    }
    float w[kRowBatch];
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) w[k] = 1.f / (kAggMax ? z[k] : z[k] * wscale);
#pragma unroll 2
    for (int i = 0; i < mine; ++i) {
      const int c = tid + i * kTopPThreads;
      float acc = P[c];
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k)
        if (k < nr) {
          const float d = __expf(rows[int64_t(k) * nb + c] - mx[k]) * w[k];
          acc = kAggMax ? fmaxf(acc, d) : acc + d;
        }
      P[c] = acc;
    }
  }
  if (kAggMax) {  // renormalise the per-block maxima to a distribution over c in [0, b]
    float t = 0.f;
    for (int c = tid; c < n; c += kTopPThreads) t += P[c];
    t = block_sum(t, red);
    for (int c = tid; c < n; c += kTopPThreads) P[c] /= t;
  }
  __syncthreads();
  auto forced = [&](int c) { return c == 0 || (c <= b && c > b - local_blocks); };
  float fm = 0.f, pmax = 0.f;
  int nforced = 0;
  for (int c = tid; c < n; c += kTopPThreads) {
    if (forced(c)) fm += P[c], ++nforced;
    else pmax = fmaxf(pmax, P[c]);
  }
  fm = block_sum(fm, red);
  nforced = int(block_sum(float(nforced), red));
  pmax = block_max(pmax, red);
  // Forced blocks get P = -1 (every threshold tried is > 0): the searches below then test one value per block,
  // not the forced rule. Each thread owns the same columns c = tid + k * kTopPThreads in every loop of the kernel,
  // so no barrier is needed around this.
  for (int c = tid; c < n; c += kTopPThreads)
    if (forced(c)) P[c] = -1.f;
  const float m = top_p - fm;
  // threshold: selected non-forced = {P >= tau}; tau = +inf selects none
  float tau = INFINITY;
  if (m > 0.f && n > nforced) {
    // largest tau (as float bits) with S(tau) >= m; S(0) = all non-forced mass (if < m, take all)
    uint32_t lo = 0, hi = __float_as_uint(pmax) + 1;
    while (hi - lo > 1) {
      const uint32_t mid = lo + (hi - lo) / 2;
      const float tm = __uint_as_float(mid);
      float s = 0.f;
#pragma unroll 4
      for (int i = 0; i < mine; ++i) {
        const float v = P[tid + i * kTopPThreads];
        s += v >= tm ? v : 0.f;  // s + 0 is s: the sum of the one-branch version to the bit
      }
      s = block_sum(s, red);
      if (s >= m) lo = mid;
      else hi = mid;
    }
    // cap: smallest tau >= lo with count(P >= tau) <= cap
    const int cap = max_blocks - nforced;
    auto count_at = [&](uint32_t bits) {
      const float tm = __uint_as_float(bits);
      float s = 0.f;
#pragma unroll 4
      for (int i = 0; i < mine; ++i) s += P[tid + i * kTopPThreads] >= tm ? 1.f : 0.f;
      return int(block_sum(s, red));
    };
    if (count_at(lo) > cap) {
      uint32_t l2 = lo, h2 = __float_as_uint(pmax) + 1;  // count(l2) > cap, count(h2) = 0 <= cap
      while (h2 - l2 > 1) {
        const uint32_t mid = l2 + (h2 - l2) / 2;
        if (count_at(mid) > cap) l2 = mid;
        else h2 = mid;
      }
      lo = h2;
    }
    tau = __uint_as_float(lo);
  }
  // Ascending compaction: warp w owns the contiguous columns [w * per_warp, (w + 1) * per_warp), counts its kept
  // blocks, and after one barrier writes them at its offset (one barrier instead of two per 256 columns).
  __syncthreads();  // the forced blocks' P = -1 above were written by other threads than the ones reading here
  int32_t* out = indices + lb * max_blocks;
  const int warp = tid / 32, lane = tid % 32;
  const int per_warp = (n + kTopPThreads - 1) / kTopPThreads * 32;
  const int w0 = warp * per_warp, w1 = min(n, w0 + per_warp);
  auto keep_at = [&](int c) { return c < w1 && (forced(c) || P[c] >= tau); };
  int cnt = 0;
  for (int c0 = w0; c0 < w1; c0 += 32) cnt += __popc(__ballot_sync(0xffffffffu, keep_at(c0 + lane)));
  if (lane == 0) wcount[warp] = cnt;
  __syncthreads();
  int off = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kTopPWarps; ++w) {
    off += w < warp ? wcount[w] : 0;
    total += wcount[w];
  }
  for (int c0 = w0; c0 < w1; c0 += 32) {
    const bool keep = keep_at(c0 + lane);
    const unsigned bal = __ballot_sync(0xffffffffu, keep);
    const int o = off + __popc(bal & ((1u << lane) - 1u));
    if (keep && o < max_blocks) out[o] = c0 + lane;
    off += __popc(bal);
  }
  if (tid == 0) counts[lb] = min(total, max_blocks);
}

// The launch's scratch: pooled queries, a chunk of logits with their split partials, the keys in bf16 (float32
// index keys only) and the block means, each 256-byte aligned.
struct SelectScratch {
  int R, GS, nb, nqb, nsp;
  int64_t chunk;
  size_t qbar, L, part, ikb, kmean;  // byte offsets
  size_t total;
};

SelectScratch plan_select(const BlockSelectParams& p) {
  SelectScratch s{};
  const int B = p.block_size;
  s.R = p.num_ret_heads;
  s.GS = p.group_size * p.query_sub_blocks;  // logit rows per query block
  const int64_t T = p.seq_len, Tq = T - p.q_offset, qb0 = p.q_offset / B;
  s.nb = int((T + B - 1) / B);     // key blocks (the length of a row of logits)
  s.nqb = int((Tq + B - 1) / B);   // query blocks of this call
  // Query-block chunk so that the logit workspace stays under ~512 MB.
  s.chunk = std::max<int64_t>(1, std::min<int64_t>(s.nqb, (int64_t(512) << 20) / (int64_t(s.GS) * s.nb * 4)));
  s.nsp = int((qb0 + s.nqb - 1) / kKeyBlocksPerSplit) + 1;  // key splits of the last query block
  const auto al = [](size_t n) { return (n + 255) / 256 * 256; };
  size_t at = 0;
  const auto take = [&](size_t bytes) { const size_t here = at; at += al(bytes); return here; };
  s.qbar = take(size_t(s.R) * s.nqb * s.GS * kIndexDim * 2);
  s.L = take(size_t(s.chunk) * s.GS * s.nb * 4);
  s.part = take(size_t(s.chunk) * s.GS * s.nsp * sizeof(float2));
  s.ikb = take(p.index_dtype == DType::F32 ? size_t(s.R) * T * kIndexDim * 2 : 0);
  s.kmean = take(size_t(s.R) * s.nb * 2 * kIndexDim * 2);
  s.total = at;
  return s;
}

}  // namespace

size_t select_blocks_workspace_bytes(const BlockSelectParams& p) {
  return *check_block_select_params(p) ? 0 : plan_select(p).total;
}

cudaError_t select_blocks_cuda(const BlockSelectParams& p, cudaStream_t stream) {
  if (*check_block_select_params(p)) return cudaErrorInvalidValue;
  const int G = p.group_size, B = p.block_size, S = p.query_sub_blocks;
  const int64_t T = p.seq_len, Tq = T - p.q_offset, qb0 = p.q_offset / B;
  const SelectScratch sc = plan_select(p);
  const int R = sc.R, GS = sc.GS, nb = sc.nb, nqb = sc.nqb, nsp = sc.nsp;
  const int64_t chunk = sc.chunk;
  if (size_t(nb) * sizeof(float) > 200 * 1024) return cudaErrorInvalidValue;  // P must fit in shared memory
  // A caller-owned workspace (the framework's caching allocator) saves two driver calls per buffer: with the
  // default pool's release threshold, cudaMallocAsync/cudaFreeAsync reach the driver after every synchronisation.
  char* ws = static_cast<char*>(p.workspace);
  const bool own = ws == nullptr;
  if (!own && p.workspace_bytes < sc.total) return cudaErrorInvalidValue;
  cudaError_t e = own ? cudaMallocAsync(&ws, sc.total, stream) : cudaSuccess;
  __nv_bfloat16* qbar = reinterpret_cast<__nv_bfloat16*>(ws + sc.qbar);
  float* L = reinterpret_cast<float*>(ws + sc.L);
  float2* part = reinterpret_cast<float2*>(ws + sc.part);
  __nv_bfloat16* ikb = reinterpret_cast<__nv_bfloat16*>(ws + sc.ikb);
  __nv_bfloat16* kmean = reinterpret_cast<__nv_bfloat16*>(ws + sc.kmean);
  if (e == cudaSuccess) {
    const int64_t nq = int64_t(R) * nqb * GS * kIndexDim;
    const int pool_blocks = int(std::min<int64_t>((nq + 255) / 256, 65535));
    const __nv_bfloat16* ik = static_cast<const __nv_bfloat16*>(p.index_k);
    if (p.index_dtype == DType::F32) {
      pool_kernel<float><<<pool_blocks, 256, 0, stream>>>(static_cast<const float*>(p.index_q), qbar, R, G, S, Tq, B,
                                                          nqb);
      to_bf16_kernel<float><<<1024, 256, 0, stream>>>(static_cast<const float*>(p.index_k), ikb, int64_t(R) * T * kIndexDim);
      ik = ikb;
    } else {
      pool_kernel<__nv_bfloat16><<<pool_blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(p.index_q), qbar,
                                                                  R, G, S, Tq, B, nqb);
    }
    block_mean_keys_kernel<<<dim3(unsigned((int64_t(nb) * kIndexDim + 255) / 256), unsigned(R)), 256, 0, stream>>>(
        ik, kmean, T, B, nb);
    e = cudaGetLastError();
    if (e == cudaSuccess && B == 128)
      e = cudaFuncSetAttribute(logits_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(logits_smem_bytes(128)));
    const size_t smem = size_t(nb) * sizeof(float);
    const bool agg_max = p.sub_block_aggregate == BlockAggregate::MAX;
    auto* topp = agg_max ? topp_kernel<true> : topp_kernel<false>;
    if (e == cudaSuccess && smem > 48 * 1024)
      e = cudaFuncSetAttribute(topp, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    for (int r = 0; r < R && e == cudaSuccess; ++r) {
      for (int64_t b0 = 0; b0 < nqb && e == cudaSuccess; b0 += chunk) {
        const int64_t nbc = std::min<int64_t>(chunk, nqb - b0);
        const int64_t nrows = nbc * GS;
        // Key splits of kKeyBlocksPerSplit blocks up to the chunk's last query block (causal: nothing past it).
        const int64_t last_qb = qb0 + b0 + nbc - 1;
        const dim3 grid(unsigned((nrows + 127) / 128), unsigned(last_qb / kKeyBlocksPerSplit + 1));
        const __nv_bfloat16* qr = qbar + int64_t(r) * nqb * GS * kIndexDim;
        const __nv_bfloat16* kr = ik + int64_t(r) * T * kIndexDim;
        const __nv_bfloat16* mr = kmean + int64_t(r) * nb * 2 * kIndexDim;
        if (B == 64)
          logits_kernel<64><<<grid, 256, logits_smem_bytes(64), stream>>>(qr, kr, mr, L, part, nsp, GS, T, nb, b0 * GS,
                                                                         nrows, int64_t(nqb) * GS, qb0, kKeyBlocksPerSplit);
        else
          logits_kernel<128><<<grid, 256, logits_smem_bytes(128), stream>>>(qr, kr, mr, L, part, nsp, GS, T, nb,
                                                                           b0 * GS, nrows, int64_t(nqb) * GS, qb0,
                                                                           kKeyBlocksPerSplit);
        topp<<<unsigned(nbc), kTopPThreads, smem, stream>>>(L, part, nsp, kKeyBlocksPerSplit, p.counts + int64_t(r) * nqb,
                                                         p.indices + int64_t(r) * nqb * p.max_blocks, G, S, B, Tq, nb,
                                                         b0, qb0, p.local_blocks, p.max_blocks, p.top_p);
        e = cudaGetLastError();
      }
    }
  }
  if (own && ws) {
    const cudaError_t f = cudaFreeAsync(ws, stream);
    if (e == cudaSuccess) e = f;
  }
  return e;
}

}  // namespace rtp::kernels
