// Sparse decode on the GPU (definition in sparse_attention_params.h). Four launches:
//   1. stats:   per (retrieval slot, key chunk) and query head of the group: max and sum of exp of the
//               index scores (split over the sequence)
//   2. hist:    combine the chunk stats, P(j) = mean_h p_h(j), per-token bin (uint16, 0xFFFF = forced) and a
//               histogram of P per bin (shared-memory histogram, then global atomics)
//   3. attend:  split-K attention: each thread block a chunk of keys of one KV head for all G query heads;
//               retrieval heads find the cut bin b* from the histogram (one warp scan) and skip tokens with
//               bin > b*; streaming heads read the valid ring slots; dense heads every token
//   4. combine: per query head, merge the chunk partials (m, l, acc)
#include <cuda_bf16.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "cuda_common.cuh"
#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels {
namespace {
using namespace cuda_detail;

constexpr int kStatChunk = 2048;  // tokens per stats / hist thread block (64 blocks per retrieval head at 128K)
constexpr int kAttnThreads = 128;  // 4 warps
constexpr int kMaxG = 16;
constexpr uint16_t kForced = 0xFFFF;

struct DecodeArgs {
  int G, D;
  int64_t L, cap, ring, sink, window, keep_first, keep_last;
  float scale;
  float top_p;
  int8_t kind[kMaxKvHeads];
  int8_t slot[kMaxKvHeads];  // full slot / ring slot
  int8_t rslot[kMaxKvHeads];  // retrieval slot
  int nsplit[kMaxKvHeads];
  int chunk[kMaxKvHeads];
  int max_split;
};

template <typename IT>
__device__ __forceinline__ void load_index_row(const IT* p, float* out) {
#pragma unroll
  for (int d = 0; d < kIndexDim; ++d) out[d] = to_float(p[d]);
}

// grid (nchunks, R); block 256. stats[(r * nchunks + chunk) * G + h] = (max, sum exp(s - max)).
// GM >= G bounds the unrolled per-head state (GM 16 for every G spilled 570 bytes of registers).
template <typename IT, int GM>
__global__ void __launch_bounds__(256) stats_kernel(const IT* iq, const IT* ik, float2* stats, int G, int64_t L,
                                                    int64_t cap, int nchunks) {
  __shared__ float q[GM][kIndexDim];
  __shared__ float red[GM][8];
  const int r = blockIdx.y, tid = threadIdx.x;
  for (int i = tid; i < G * kIndexDim; i += blockDim.x) q[i / kIndexDim][i % kIndexDim] = to_float(iq[(int64_t(r) * G) * kIndexDim + i]) * 0.25f;
  __syncthreads();
  float mx[GM], sm[GM];
#pragma unroll
  for (int h = 0; h < GM; ++h) mx[h] = -INFINITY, sm[h] = 0.f;
  const int64_t j0 = int64_t(blockIdx.x) * kStatChunk, j1 = min(L, j0 + kStatChunk);
  for (int64_t j = j0 + tid; j < j1; j += blockDim.x) {
    float k[kIndexDim];
    load_index_row(ik + (int64_t(r) * cap + j) * kIndexDim, k);
#pragma unroll
    for (int h = 0; h < GM; ++h) {
      if (h >= G) break;
      float s = 0.f;
#pragma unroll
      for (int d = 0; d < kIndexDim; ++d) s = fmaf(q[h][d], k[d], s);
      const float nm = fmaxf(mx[h], s);
      sm[h] = sm[h] * __expf(mx[h] - nm) + __expf(s - nm);
      mx[h] = nm;
    }
  }
  const int warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int h = 0; h < GM; ++h) {
    if (h >= G) break;  // G is the same in every thread: the barriers below stay uniform
    float m = warp_max(mx[h]);
    float s = (mx[h] == -INFINITY) ? 0.f : sm[h] * __expf(mx[h] - m);
    s = warp_sum(s);
    if (lane == 0) red[h][warp] = m;
    __syncthreads();
    float gm = -INFINITY;
    for (int w = 0; w < 8; ++w) gm = fmaxf(gm, red[h][w]);
    __syncthreads();
    if (lane == 0) red[h][warp] = (m == -INFINITY) ? 0.f : s * __expf(m - gm);
    __syncthreads();
    if (tid == 0) {
      float gs = 0.f;
      for (int w = 0; w < 8; ++w) gs += red[h][w];
      stats[(int64_t(r) * nchunks + blockIdx.x) * G + h] = make_float2(gm, gs);
    }
    __syncthreads();
  }
}

// grid (nchunks, R); hist[r][kDecodeBins] and forced[r] must be zeroed.
template <typename IT>
__global__ void __launch_bounds__(256) hist_kernel(const IT* iq, const IT* ik, const float2* stats, uint16_t* bins,
                                                   float* hist, float* forced_mass, int G, int64_t L, int64_t cap,
                                                   int nchunks, int64_t keep_first, int64_t keep_last) {
  __shared__ float q[kMaxG][kIndexDim];
  __shared__ float gm[kMaxG], ginv[kMaxG];
  __shared__ float sh[kDecodeBins];
  __shared__ float sforced;
  const int r = blockIdx.y, tid = threadIdx.x;
  for (int i = tid; i < G * kIndexDim; i += blockDim.x) q[i / kIndexDim][i % kIndexDim] = to_float(iq[(int64_t(r) * G) * kIndexDim + i]) * 0.25f;
  for (int i = tid; i < kDecodeBins; i += blockDim.x) sh[i] = 0.f;
  if (tid == 0) sforced = 0.f;
  if (tid < G) {
    float m = -INFINITY;
    for (int c = 0; c < nchunks; ++c) m = fmaxf(m, stats[(int64_t(r) * nchunks + c) * G + tid].x);
    float s = 0.f;
    for (int c = 0; c < nchunks; ++c) {
      const float2 st = stats[(int64_t(r) * nchunks + c) * G + tid];
      if (st.x != -INFINITY) s += st.y * __expf(st.x - m);
    }
    gm[tid] = m;
    ginv[tid] = 1.f / (s * float(G));
  }
  __syncthreads();
  const int64_t t = L - 1;
  const int64_t j0 = int64_t(blockIdx.x) * kStatChunk, j1 = min(L, j0 + kStatChunk);
  float fsum = 0.f;
  for (int64_t j = j0 + tid; j < j1; j += blockDim.x) {
    float k[kIndexDim];
    load_index_row(ik + (int64_t(r) * cap + j) * kIndexDim, k);
    float P = 0.f;
    for (int h = 0; h < G; ++h) {
      float s = 0.f;
#pragma unroll
      for (int d = 0; d < kIndexDim; ++d) s = fmaf(q[h][d], k[d], s);
      P += __expf(s - gm[h]) * ginv[h];
    }
    const bool f = j < keep_first || j > t - keep_last;
    int bin = kDecodeBins - 1;
    if (P > 0.f) bin = int(fminf(float(kDecodeBins - 1), fmaxf(0.f, floorf(-float(kDecodeBinsPerOctave) * log2f(P)))));
    if (f) {
      fsum += P;
      bins[int64_t(r) * cap + j] = kForced;
    } else {
      atomicAdd(&sh[bin], P);
      bins[int64_t(r) * cap + j] = uint16_t(bin);
    }
  }
  fsum = warp_sum(fsum);
  if (tid % 32 == 0) atomicAdd(&sforced, fsum);
  __syncthreads();
  for (int i = tid; i < kDecodeBins; i += blockDim.x)
    if (sh[i] != 0.f) atomicAdd(&hist[int64_t(r) * kDecodeBins + i], sh[i]);
  if (tid == 0) atomicAdd(&forced_mass[r], sforced);
}

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
__global__ void __launch_bounds__(kAttnThreads) attend_kernel(const __grid_constant__ DecodeArgs a,
                                                              const __nv_bfloat16* q, const __nv_bfloat16* kf,
                                                              const __nv_bfloat16* vf, const __nv_bfloat16* kr,
                                                              const __nv_bfloat16* vr, const uint16_t* bins,
                                                              const float* hist, const float* forced_mass,
                                                              float* part_acc, float2* part_ml,
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
  if (split >= a.nsplit[kvh]) return;
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
  int64_t nkeys;
  const uint16_t* mybins = nullptr;
  const int64_t nsink = min(a.sink, a.L);
  if (kind == int(HeadKind::STREAMING)) {
    K = kr + int64_t(a.slot[kvh]) * a.ring * D;
    V = vr + int64_t(a.slot[kvh]) * a.ring * D;
    nkeys = nsink + min(a.window, max(int64_t(0), a.L - a.sink));
  } else {
    K = kf + int64_t(a.slot[kvh]) * a.cap * D;
    V = vf + int64_t(a.slot[kvh]) * a.cap * D;
    nkeys = a.L;
  }
  if (kind == int(HeadKind::RETRIEVAL)) {
    const int rs = a.rslot[kvh];
    mybins = bins + int64_t(rs) * a.cap;
    if (warp == 0) {
      // b* = smallest bin with forced + cumulative >= top_p; -1 if forced alone reaches it.
      const float* hh = hist + int64_t(rs) * kDecodeBins;
      float acc = forced_mass[rs];
      int bstar = acc >= a.top_p ? -1 : kDecodeBins - 1;
      for (int base = 0; base < kDecodeBins && bstar == kDecodeBins - 1 && acc < a.top_p; base += 32) {
        float v = hh[base + lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {  // inclusive scan
          const float n = __shfl_up_sync(0xffffffffu, v, o);
          if (lane >= o) v += n;
        }
        const unsigned hit = __ballot_sync(0xffffffffu, acc + v >= a.top_p);
        if (hit) bstar = base + __ffs(hit) - 1;
        acc += __shfl_sync(0xffffffffu, v, 31);
      }
      if (lane == 0) s_bstar = bstar;
    }
  }
  for (int i = tid; i < GM * D; i += NT) {
    const int h = i / D;
    (&qs[0][0])[i] = h < G ? __bfloat162float(q[(int64_t(kvh) * G) * D + i]) * a.scale : 0.f;
  }
  if (tid < GM) m_s[tid] = -INFINITY, l_s[tid] = 0.f;
  __syncthreads();
  const int bstar = kind == int(HeadKind::RETRIEVAL) ? s_bstar : 0;
  const int64_t k0 = int64_t(split) * a.chunk[kvh], k1 = min(nkeys, k0 + a.chunk[kvh]);

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

// grid Hq, block D threads.
__global__ void combine_kernel(const DecodeArgs a, const float* part_acc, const float2* part_ml, __nv_bfloat16* o) {
  const int h = blockIdx.x, d = threadIdx.x;
  const int ns = a.nsplit[h / a.G];
  float M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, part_ml[int64_t(h) * a.max_split + s].x);
  float Lsum = 0.f, acc = 0.f;
  for (int s = 0; s < ns; ++s) {
    const float2 ml = part_ml[int64_t(h) * a.max_split + s];
    if (ml.x == -INFINITY) continue;
    const float w = __expf(ml.x - M);
    Lsum += ml.y * w;
    acc += part_acc[(int64_t(h) * a.max_split + s) * a.D + d] * w;
  }
  o[int64_t(h) * a.D + d] = __float2bfloat16(Lsum > 0.f ? acc / Lsum : 0.f);
}

}  // namespace

namespace {

// The launch geometry and the workspace layout of one decode call.
struct DecodePlan {
  DecodeArgs a{};
  int R = 0, nchunks = 0;
  size_t n_acc = 0, n_ml = 0, n_stats = 0, n_hist = 0, n_bins = 0;
  static size_t al(size_t x) { return (x + 255) / 256 * 256; }
  size_t total() const { return al(n_acc) + al(n_ml) + al(n_stats) + al(n_hist) + al(n_bins); }
};

DecodePlan plan_decode(const SparseDecodeParams& p) {
  DecodePlan plan;
  DecodeArgs& a = plan.a;
  a.G = p.num_q_heads / p.num_kv_heads;
  a.D = p.head_dim;
  a.L = p.kv_len;
  a.cap = p.cap_full;
  a.ring = p.sink + p.window;
  a.sink = p.sink;
  a.window = p.window;
  a.keep_first = p.keep_first;
  a.keep_last = p.keep_last;
  a.scale = p.scale > 0 ? p.scale : 1.f / std::sqrt(float(p.head_dim));
  a.top_p = p.top_p;
  int nfull = 0, nstr = 0, R = 0;
  a.max_split = 1;
  for (int g = 0; g < p.num_kv_heads; ++g) {
    const HeadKind k = p.head_kind[g];
    a.kind[g] = int8_t(k);
    a.rslot[g] = int8_t(k == HeadKind::RETRIEVAL ? R++ : -1);
    a.slot[g] = int8_t(k == HeadKind::STREAMING ? nstr++ : nfull++);
    int64_t nkeys;
    int chunk;
    if (k == HeadKind::STREAMING) {
      nkeys = std::min(p.sink, p.kv_len) + std::min(p.window, std::max<int64_t>(0, p.kv_len - p.sink));
      chunk = 128;  // two 64-key tiles per thread block, ~65 blocks per streaming head at window 8192
    } else {
      nkeys = p.kv_len;
      chunk = k == HeadKind::RETRIEVAL ? 2048 : 256;
    }
    a.chunk[g] = chunk;
    a.nsplit[g] = int(std::max<int64_t>(1, (nkeys + chunk - 1) / chunk));
    a.max_split = std::max(a.max_split, a.nsplit[g]);
  }
  const int Hq = p.num_q_heads;
  plan.R = R;
  plan.nchunks = int((p.kv_len + kStatChunk - 1) / kStatChunk);
  // one workspace: part_acc | part_ml | stats | hist | forced | bins
  plan.n_acc = size_t(Hq) * a.max_split * p.head_dim * 4;
  plan.n_ml = size_t(Hq) * a.max_split * 8;
  plan.n_stats = size_t(std::max(R, 1)) * plan.nchunks * a.G * 8;
  plan.n_hist = size_t(std::max(R, 1)) * (kDecodeBins + 1) * 4;
  plan.n_bins = size_t(std::max(R, 1)) * p.cap_full * 2;
  return plan;
}

}  // namespace

size_t sparse_decode_workspace_bytes(const SparseDecodeParams& p) {
  if (*check_sparse_decode_params(p, true)) return 0;
  return plan_decode(p).total();
}

cudaError_t sparse_decode_cuda(const SparseDecodeParams& p, cudaStream_t stream) {
  if (*check_sparse_decode_params(p, true)) return cudaErrorInvalidValue;
  const DecodePlan plan = plan_decode(p);
  const DecodeArgs& a = plan.a;
  const int R = plan.R, nchunks = plan.nchunks, Hq = p.num_q_heads;
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
  float* forced = hist + size_t(std::max(R, 1)) * kDecodeBins;
  uint16_t* bins = reinterpret_cast<uint16_t*>(ws + al(n_acc) + al(n_ml) + al(n_stats) + al(n_hist));
  if (R > 0) {
    e = cudaMemsetAsync(hist, 0, n_hist, stream);
    if (p.selected_count && e == cudaSuccess) e = cudaMemsetAsync(p.selected_count, 0, size_t(R) * 4, stream);
    const dim3 g(nchunks, R);
    if (e == cudaSuccess) {
      auto launch = [&](auto* iq, auto* ik) {
        using IT = std::remove_const_t<std::remove_pointer_t<decltype(iq)>>;
        (a.G <= 8 ? stats_kernel<IT, 8> : stats_kernel<IT, kMaxG>)<<<g, 256, 0, stream>>>(iq, ik, stats, a.G,
                                                                                        p.kv_len, p.cap_full, nchunks);
        hist_kernel<<<g, 256, 0, stream>>>(iq, ik, stats, bins, hist, forced, a.G, p.kv_len, p.cap_full, nchunks,
                                           p.keep_first, p.keep_last);
      };
      if (p.index_dtype == DType::BF16)
        launch(static_cast<const __nv_bfloat16*>(p.index_q), static_cast<const __nv_bfloat16*>(p.index_k));
      else
        launch(static_cast<const float*>(p.index_q), static_cast<const float*>(p.index_k));
      e = cudaGetLastError();
    }
  }
  if (e == cudaSuccess) {
    const dim3 g(a.max_split, p.num_kv_heads);
    auto qb = static_cast<const __nv_bfloat16*>(p.q);
    auto kf = static_cast<const __nv_bfloat16*>(p.k_full);
    auto vf = static_cast<const __nv_bfloat16*>(p.v_full);
    auto kr = static_cast<const __nv_bfloat16*>(p.k_ring);
    auto vr = static_cast<const __nv_bfloat16*>(p.v_ring);
    // 64-key tiles; 32 with 16 query heads per KV head (shared memory stays under the 48 KB static limit).
    auto kern = p.head_dim == 128 ? (a.G <= 8 ? attend_kernel<128, 8, 64> : attend_kernel<128, 16, 32>)
                                  : (a.G <= 8 ? attend_kernel<64, 8, 64> : attend_kernel<64, 16, 32>);
    kern<<<g, kAttnThreads, 0, stream>>>(a, qb, kf, vf, kr, vr, bins, hist, forced, part_acc, part_ml,
                                         p.selected_count);
    combine_kernel<<<Hq, p.head_dim, 0, stream>>>(a, part_acc, part_ml, static_cast<__nv_bfloat16*>(p.o));
    e = cudaGetLastError();
  }
  const cudaError_t e2 = own ? cudaFreeAsync(ws, stream) : cudaSuccess;
  return e != cudaSuccess ? e : e2;
}

}  // namespace rtp::kernels
