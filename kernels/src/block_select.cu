// Prefill block selection on the GPU (definition in sparse_attention_params.h):
//   1. pool:    qbar[r][b][s][h] = mean of index_q over sub-block s of the query block (bf16 for the tensor
//               cores); S = query_sub_blocks sub-blocks, S = 1 the whole block
//   2. logits:  L[row = (b, s, h)][c] = max(max_j u, mean_j u + log n_c), u = qbar . index_k[j] / 4, one
//               mma.sync m16n8k16 per 16 rows x 8 keys (the index dimension is exactly one k-step);
//               rows are processed in chunks of query blocks so the logit workspace stays bounded
// Chunked prefill (q_offset > 0, a multiple of the block size): index_q holds the chunk's queries, so its
// blocks are the query blocks qb0 = q_offset / B onwards; rows and lists are indexed locally from qb0 and the
// block numbers that rule causality and the forced blocks are absolute.
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

// Block logits for rows [row0, row0 + nrows) of slot r; L[(row - row0) * nb + c]. 8 warps x 16 rows; 80 registers
// (3 blocks per SM) for two sets of key fragments.
// B = block size (64 or 128 keys, processed as 64-key halves). G = rows per query block (S * group size).
// grid (row tiles of 128, key splits): thread block (x, y) does key blocks [y * kb_split, (y + 1) * kb_split). One
// row tile walking every key block left the GPU idle: the work grows as nb^2, the row tiles only as nb (32 thread
// blocks at 32K tokens, 1.06 ms, 0.06 waves: ncu, H200).
__global__ void __launch_bounds__(256, 3) logits_kernel(const __nv_bfloat16* qbar, const __nv_bfloat16* ik, float* L,
                                                     int G, int64_t T_, int B, int nb, int64_t row0, int64_t nrows,
                                                     int64_t rows_total, int64_t qb0, int kb_split) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
  const int64_t wrow = row0 + int64_t(blockIdx.x) * 128 + warp * 16;  // first global row of this warp
  if (wrow >= row0 + nrows) return;
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
  const int64_t rlast = min(wrow + 15, row0 + nrows - 1);
  const int64_t bmax = qb0 + rlast / G;  // last (absolute) query block among the warp's rows
  const int64_t b_r0 = qb0 + (wrow + g) / G, b_r1 = qb0 + (wrow + g + 8) / G;
  const int64_t lr0 = wrow + g - row0, lr1 = wrow + g + 8 - row0;
  const int64_t c_begin = int64_t(blockIdx.y) * kb_split, c_end = min(bmax, c_begin + kb_split - 1);
  // The key fragments of 64-key unit u + 1 are loaded while unit u's mmas run: waiting on these loads (L1/L2
  // hits) was most of the kernel's time (ncu, late 1M chunk: 10 long-scoreboard stalls per issued instruction).
  // Units: u = c * (B / 64) + half, two register sets used alternately.
  const int halves = B / 64;
  const int64_t u_begin = c_begin * halves, u_end = (c_end + 1) * halves;
  auto load_unit = [&](int64_t u, uint32_t (&f)[8][2]) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int64_t key = min(u * 64 + nt * 8 + g, T_ - 1);
      const uint32_t* pk = reinterpret_cast<const uint32_t*>(ik + key * kIndexDim);
      f[nt][0] = __ldg(pk + t4);
      f[nt][1] = __ldg(pk + t4 + 4);
    }
  };
  float mx0 = -INFINITY, mx1 = -INFINITY, sm0 = 0.f, sm1 = 0.f;
  // unit u with its fragments in cur, the next unit's loads issued into nxt first
  auto run_unit = [&](int64_t u, const uint32_t (&cur)[8][2], uint32_t (&nxt)[8][2]) {
    if (u + 1 < u_end) load_unit(u + 1, nxt);
    const int64_t c = u / halves;
    const int half = int(u - c * halves);
    if (half == 0) mx0 = -INFINITY, mx1 = -INFINITY, sm0 = 0.f, sm1 = 0.f;
    const int64_t k0 = c * B;
    const int64_t nvalid = min(T_, k0 + B) - k0;
    // The 1/sqrt(16) scale is applied once to the reduced max and sum (a power of two: the same bits as scaling
    // every score); a full block takes the path without per-key bounds checks.
    const bool full = nvalid == B;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      mma_bf16_16816(d, af, cur[nt][0], cur[nt][1]);
      if (full) {
        mx0 = fmaxf(mx0, fmaxf(d[0], d[1]));
        mx1 = fmaxf(mx1, fmaxf(d[2], d[3]));
        sm0 = (sm0 + d[0]) + d[1];  // the order of the checked path below: the same sums to the bit
        sm1 = (sm1 + d[2]) + d[3];
        continue;
      }
      const int64_t kc = k0 + half * 64 + nt * 8 + 2 * t4;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool ok = kc + (e & 1) < T_;
        if (e < 2) {
          mx0 = ok ? fmaxf(mx0, d[e]) : mx0;
          sm0 += ok ? d[e] : 0.f;
        } else {
          mx1 = ok ? fmaxf(mx1, d[e]) : mx1;
          sm1 += ok ? d[e] : 0.f;
        }
      }
    }
    if (half != halves - 1) return;
    float m0 = mx0 * 0.25f, m1 = mx1 * 0.25f, z0 = sm0 * 0.25f, z1 = sm1 * 0.25f;
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, o));
      m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, o));
      z0 += __shfl_xor_sync(0xffffffffu, z0, o);
      z1 += __shfl_xor_sync(0xffffffffu, z1, o);
    }
    if (t4 == 0) {
      const float ln = logf(float(nvalid));
      if (lr0 < nrows && c <= b_r0) L[lr0 * nb + c] = fmaxf(m0, z0 / float(nvalid) + ln);
      if (lr1 < nrows && c <= b_r1) L[lr1 * nb + c] = fmaxf(m1, z1 / float(nvalid) + ln);
    }
  };
  uint32_t fa[8][2], fb[8][2];
  int64_t u = u_begin;
  if (u < u_end) load_unit(u, fa);
  for (; u + 1 < u_end; u += 2) {
    run_unit(u, fa, fb);
    run_unit(u + 1, fb, fa);
  }
  if (u < u_end) run_unit(u, fa, fb);
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
// The rows are read kRowBatch at a time (max, then sum of exp, then P): one row per pass kept one load in flight
// per thread, and those loads (the logits come from DRAM: a chunk's are up to 512 MB) were the kernel's time (ncu,
// late 1M chunk: 2.06 ms, 6.7 long-scoreboard stalls per issued instruction). Every sum is taken in the order of
// the one-row loop, so P is the same to the bit.
// kAggMax: BlockAggregate::MAX (P = per-block max over the rows' distributions, renormalised), else MEAN.
template <bool kAggMax>
__global__ void __launch_bounds__(kTopPThreads) topp_kernel(const float* L, int32_t* counts, int32_t* indices, int G, int S,
                                                   int B, int64_t Tq, int nb, int64_t b0, int64_t qb0,
                                                   int local_blocks, int max_blocks, float top_p) {
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
    const float* rows = L + (int64_t(blockIdx.x) * S * G + h0) * nb;
    float mx[kRowBatch], z[kRowBatch];
#pragma unroll
    for (int k = 0; k < kRowBatch; ++k) mx[k] = -INFINITY, z[k] = 0.f;
#pragma unroll 2
    for (int i = 0; i < mine; ++i) {
      const int c = tid + i * kTopPThreads;
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k)
        if (k < nr) mx[k] = fmaxf(mx[k], rows[int64_t(k) * nb + c]);
    }
    block_reduce_rows<true>(mx, red_rows);
#pragma unroll 2
    for (int i = 0; i < mine; ++i) {
      const int c = tid + i * kTopPThreads;
#pragma unroll
      for (int k = 0; k < kRowBatch; ++k)
        if (k < nr) z[k] += __expf(rows[int64_t(k) * nb + c] - mx[k]);
    }
    block_reduce_rows<false>(z, red_rows);
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

}  // namespace

cudaError_t select_blocks_cuda(const BlockSelectParams& p, cudaStream_t stream) {
  if (*check_block_select_params(p)) return cudaErrorInvalidValue;
  const int R = p.num_ret_heads, G = p.group_size, B = p.block_size, S = p.query_sub_blocks;
  const int GS = G * S;  // logit rows per query block
  const int64_t T = p.seq_len, Tq = T - p.q_offset, qb0 = p.q_offset / B;
  const int nb = int((T + B - 1) / B);      // key blocks (the length of a row of logits)
  const int nqb = int((Tq + B - 1) / B);    // query blocks of this call
  if (size_t(nb) * sizeof(float) > 200 * 1024) return cudaErrorInvalidValue;  // P must fit in shared memory
  __nv_bfloat16 *qbar = nullptr, *ikb = nullptr;
  float* L = nullptr;
  // Query-block chunk so that the logit workspace stays under ~512 MB.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(nqb, (int64_t(512) << 20) / (int64_t(GS) * nb * 4)));
  cudaError_t e = cudaMallocAsync(&qbar, size_t(R) * nqb * GS * kIndexDim * 2, stream);
  if (e == cudaSuccess) e = cudaMallocAsync(&L, size_t(chunk) * GS * nb * 4, stream);
  if (e == cudaSuccess && p.index_dtype == DType::F32) e = cudaMallocAsync(&ikb, size_t(R) * T * kIndexDim * 2, stream);
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
    e = cudaGetLastError();
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
        logits_kernel<<<grid, 256, 0, stream>>>(qbar + int64_t(r) * nqb * GS * kIndexDim,
                                                ik + int64_t(r) * T * kIndexDim, L, GS, T, B, nb, b0 * GS, nrows,
                                                int64_t(nqb) * GS, qb0, kKeyBlocksPerSplit);
        topp<<<unsigned(nbc), kTopPThreads, smem, stream>>>(L, p.counts + int64_t(r) * nqb,
                                                         p.indices + int64_t(r) * nqb * p.max_blocks, G, S, B, Tq, nb,
                                                         b0, qb0, p.local_blocks, p.max_blocks, p.top_p);
        e = cudaGetLastError();
      }
    }
  }
  if (qbar) cudaFreeAsync(qbar, stream);
  if (L) cudaFreeAsync(L, stream);
  if (ikb) cudaFreeAsync(ikb, stream);
  return e;
}

}  // namespace rtp::kernels
