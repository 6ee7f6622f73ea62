// Block-sparse causal prefill attention on Hopper warpgroup MMA (wgmma): the same contract and the same key
// tiles as the mma.sync kernel (sparse_prefill.cu), with the two matrix products issued as asynchronous
// warpgroup instructions that read Q, K and V straight from shared memory.
// Thread block = 2 warpgroups = 128 query rows (the query heads of one GQA group that share a query block,
// as in the mma.sync kernel), each warpgroup the M = 64 rows of its wgmmas. One step = 128 keys = two 64-row
// key tiles, which need not be adjacent (two selected blocks of 64): S = Q K^T is m64n128 over D/16
// k-steps, P stays in registers (the accumulator layout is the A-operand layout) and O += P V is m64nD over
// the 128 keys. Tiles live in shared memory as [D/64][rows][64] with the 128-byte swizzle the descriptors
// name, in three stages filled by the TMA unit. Two kernels run these steps: the lock-step one (its two
// warpgroups share a block barrier per step, thread 0 issues the next step's loads) and the warp-specialised one
// (a producer warpgroup for the loads, the two consumer warpgroups alternating on the tensor cores), the default.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cudaTypedefs.h>

#include <type_traits>

#include "cuda_common.cuh"
#include "sparse_prefill_common.cuh"
#include "tma.cuh"
#include "warp_specialization.cuh"
#include "wgmma.cuh"

namespace rtp::kernels::cuda_detail {
namespace {

constexpr int kWgRows = 64;  // wgmma M
constexpr int kWarpgroups = 2;
constexpr int kRowsPerCta = kWgRows * kWarpgroups;
constexpr int kThreadsPerCta = 128 * kWarpgroups;
constexpr int kStepKeys = 2 * kKeyTileRows;

// Byte offset of 16-byte chunk c (of D / 8) of row r in a [D/64][ROWS][64] bf16 tile, 128-byte swizzle.
template <int ROWS>
__device__ __forceinline__ uint32_t sw128(int r, int c) {
  return uint32_t((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

constexpr int kStages = 3;

template <int D>
struct SmemLayout {  // byte offsets from a 1024-byte aligned base
  static constexpr uint32_t q_bytes = kRowsPerCta * D * 2;
  static constexpr uint32_t step_bytes = kStepKeys * D * 2;
  static constexpr uint32_t k = q_bytes;
  static constexpr uint32_t v = k + kStages * step_bytes;
  static constexpr uint32_t total = v + kStages * step_bytes;
};
static_assert(SmemLayout<128>::total + 1024 <= 232448, "shared memory per block on sm_90");

#ifdef RTP_HAVE_WGMMA
// Which keys of a step's two 64-row tiles are hidden from which query rows, in 32-bit offsets: the thread that
// issues the step's loads writes it to shared memory before its arrival on the step's K barrier (a release the
// consumers' wait acquires). The consumers then spend one shared load per step on the common case (bits = 0, no
// mask) and keep none of the block's 64-bit geometry in registers, which they have none to spare for.
// Tile u: bit u when some key is hidden from some row of the block, bits u and 2 + u when the tile lies past the
// end of the list (every key hidden). Key c (0..63) of tile u is visible to the row dr rows into the query block
// when c < rows[u] and, among the sink rows (c < sinks[u]), c <= base_sink[u] + dr, among the others
// base_lo[u] + dr < c <= base_hi[u] + dr: PrefillBlock::visible with the tile's start and the block's first
// position folded into the bases.
struct StepMask {
  uint32_t bits;
  int rows[2], sinks[2], base_sink[2], base_hi[2], base_lo[2];
};

__device__ __forceinline__ void write_step_mask(const PrefillArgs& a, const PrefillBlock& blk, int n, StepMask* m) {
  // clamped to +-2^30: the comparisons with offsets 0..63 come out the same and adding a row offset cannot overflow
  auto narrow = [](int64_t x) { return int(i64max(-(int64_t(1) << 30), i64min(int64_t(1) << 30, x))); };
  uint32_t bits = 0;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int t = 2 * n + u;
    if (t >= blk.count) {
      bits |= 5u << u;
      continue;
    }
    const int64_t ks = blk.start(t);
    if (blk.fully_visible(a, ks)) continue;
    bits |= 1u << u;
    m->rows[u] = narrow(a.krows - ks);
    m->sinks[u] = narrow(a.S - ks);
    m->base_sink[u] = narrow(blk.q0 - ks);
    m->base_hi[u] = narrow(blk.q0 - ks - a.skip);
    m->base_lo[u] = blk.kind == int(HeadKind::STREAMING) ? narrow(blk.q0 - ks - a.skip - a.window) : -(1 << 30);
  }
  m->bits = bits;
}

// One warpgroup's 64 query rows: the running output and softmax state, the scores of the step in flight and the
// previous step's P as A fragments. Accumulator layout: rows 16 * warp + g and + 8 of the warpgroup; element
// 4j + e at column 8j + 2 t4 + (e & 1). Both kernels run the same per-step sequence on it: S_n = Q K_n issued,
// then O += P_{n-1} V_{n-1}, so the second product runs on the tensor cores while the warpgroup masks and
// exponentiates S_n; P_{n-1} and O belong to the in-flight product until its wait, the softmax works on S_n.
template <int D>
struct WarpgroupRows {
  float o[D / 2];
  float s[kStepKeys / 2];
  uint32_t pf[kStepKeys / 16][4];  // P_{n-1} as A fragments, one per 16 keys
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float alpha0 = 1.f, alpha1 = 1.f;  // the factors by which O must be rescaled before the next P V
  static constexpr float kMaxSlack = 8.f;  // see softmax_in_place
  int dr0, dr1;  // this thread's two query rows, as offsets into the query block
  int t4;

  __device__ WarpgroupRows(int dr0_, int dr1_, int t4_) : dr0(dr0_), dr1(dr1_), t4(t4_) {
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < kStepKeys / 2; ++i) s[i] = 0.f;
  }

  // S = Q K^T (committed as one group): K-major operands, a k-step of 16 is 32 bytes into the 128-byte swizzled
  // rows. q_rows: this warpgroup's first Q row in the [D/64][kRowsPerCta][64] tile; kt: the step's K tiles.
  // The k-steps' descriptors are the first one's plus a constant (the address field, bytes / 16, cannot carry
  // out of its 14 bits below 256 KB). q_rows is made opaque each step: hoisted out of the loop, the 8 Q
  // descriptors took 16 registers and were spilled.
  __device__ __forceinline__ void issue_qk(uint32_t q_rows, uint32_t kt) {
    fence_registers(s);
    fence_registers(o);
    asm volatile("" : "+r"(q_rows));
    const uint64_t dq = smem_desc_sw128(q_rows, 16, 1024), dk = smem_desc_sw128(kt, 16, 1024);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint64_t da = dq + (((kk / 4) * kRowsPerCta * 128 + (kk % 4) * 32) >> 4);
      const uint64_t db = dk + (((kk / 4) * kStepKeys * 128 + (kk % 4) * 32) >> 4);
      wgmma_m64n128k16_ss(s, da, db, kk > 0);
    }
    wgmma_commit();
  }

  // O += P V (committed as one group). V is N-major (D contiguous): 16 keys = 16 swizzled rows = 2048 bytes per
  // k-step; the D/64 halves are kStepKeys rows apart (leading byte offset), 8-row groups 1024 bytes (stride).
  __device__ __forceinline__ void issue_pv(uint32_t vt) {
    const uint64_t dv0 = smem_desc_sw128(vt, kStepKeys * 128, 1024);
#pragma unroll
    for (int kk = 0; kk < kStepKeys / 16; ++kk) {
      const uint64_t dv = dv0 + ((kk * 16 * 128) >> 4);
      if constexpr (D == 128) wgmma_m64n128k16_rs_tb(o, pf[kk], dv);
      else wgmma_m64n64k16_rs_tb(o, pf[kk], dv);
    }
    wgmma_commit();
  }

  // The last step's P V, after which O is final: issued, then waited for.
  __device__ __forceinline__ void issue_last_pv(uint32_t vt) {
    fence_registers(o);
    wgmma_fence();
    issue_pv(vt);
  }
  __device__ __forceinline__ void wait_last_pv() {
    wgmma_wait<0>();
    fence_registers(o);
  }

  // Masks S_n (kMasked: by the step's StepMask in shared memory, its bits already read), exponentiates it in place
  // against the new running maxima and updates the row sums and alpha. The steps without masks run a body
  // compiled without any masking code: under a branch it made ptxas copy all 64 scores to other registers first.
  template <bool kMasked>
  __device__ __forceinline__ void softmax_in_place(const PrefillArgs& a, const StepMask* mask, uint32_t bits) {
    fence_registers(s);
    if constexpr (kMasked) {
      if (bits != 0u) mask_scores(mask, bits);
    }
    // log2 domain; a row's 4 threads hold its 128 scores. The scale is positive, so the maximum of the raw
    // scores times the scale is exactly the maximum of the scaled ones: one multiply per row, not one per pair.
    // Four partial maxima and sums per row: chains of 4 dependent instructions instead of 16, since in its
    // softmax turn a warp has its scheduler nearly to itself and stalls on every dependency.
    float r0[4], r1[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      r0[q] = fmaxf(s[4 * q], s[4 * q + 1]);
      r1[q] = fmaxf(s[4 * q + 2], s[4 * q + 3]);
    }
#pragma unroll
    for (int j = 4; j < kStepKeys / 8; ++j) {
      r0[j % 4] = fmaxf(r0[j % 4], fmaxf(s[4 * j], s[4 * j + 1]));
      r1[j % 4] = fmaxf(r1[j % 4], fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
    const float raw0 = fmaxf(fmaxf(r0[0], r0[1]), fmaxf(r0[2], r0[3]));
    const float raw1 = fmaxf(fmaxf(r1[0], r1[1]), fmaxf(r1[2], r1[3]));
    float mx0 = raw0 * a.scale_log2, mx1 = raw1 * a.scale_log2;
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // A row's reference maximum m moves only when a score passes it by more than kMaxSlack (log2 units): the
    // exponentials stay below 2^8, harmless in the fp32 sums and the bf16 P, and O needs rescaling in few steps.
    // Tracked exactly, some row of a warp's 32 set a new maximum in most steps, so most steps rescaled.
    // m = -inf (no visible key yet) moves on any finite score (alpha = exp2(-inf) = 0) and stays on none.
    const bool up0 = mx0 > m0 + kMaxSlack, up1 = mx1 > m1 + kMaxSlack;
    alpha0 = up0 ? fast_exp2(m0 - mx0) : 1.f;
    alpha1 = up1 ? fast_exp2(m1 - mx1) : 1.f;
    if (up0) m0 = mx0;
    if (up1) m1 = mx1;
    const float ref0 = m0 == -INFINITY ? 0.f : m0, ref1 = m1 == -INFINITY ? 0.f : m1;
#pragma unroll
    for (int j = 0; j < kStepKeys / 8; ++j) {
      s[4 * j + 0] = fast_exp2(fmaf(s[4 * j + 0], a.scale_log2, -ref0));
      s[4 * j + 1] = fast_exp2(fmaf(s[4 * j + 1], a.scale_log2, -ref0));
      s[4 * j + 2] = fast_exp2(fmaf(s[4 * j + 2], a.scale_log2, -ref1));
      s[4 * j + 3] = fast_exp2(fmaf(s[4 * j + 3], a.scale_log2, -ref1));
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      r0[q] = s[4 * q] + s[4 * q + 1];
      r1[q] = s[4 * q + 2] + s[4 * q + 3];
    }
#pragma unroll
    for (int j = 4; j < kStepKeys / 8; ++j) {
      r0[j % 4] += s[4 * j] + s[4 * j + 1];
      r1[j % 4] += s[4 * j + 2] + s[4 * j + 3];
    }
    l0 = l0 * alpha0 + ((r0[0] + r0[1]) + (r0[2] + r0[3]));
    l1 = l1 * alpha1 + ((r1[0] + r1[1]) + (r1[2] + r1[3]));
  }

  // -inf for the scores of keys hidden from their row: whole tiles past the end of the list, single keys in the
  // tiles the bits name.
  __device__ __forceinline__ void mask_scores(const StepMask* mask, uint32_t bits) {
    const volatile StepMask* m = mask;
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (bits & (4u << u)) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[4 * (8 * u + j) + e] = -INFINITY;
      } else if (bits & (1u << u)) {
        // thresholds shifted by this thread's first column so that the key offsets compared are constants
        const int rows = m->rows[u] - 2 * t4, sinks = m->sinks[u] - 2 * t4;
        const int bs = m->base_sink[u] - 2 * t4, bh = m->base_hi[u] - 2 * t4, bl = m->base_lo[u] - 2 * t4;
        const int hs0 = bs + dr0, hi0 = bh + dr0, lo0 = bl + dr0, hs1 = bs + dr1, hi1 = bh + dr1, lo1 = bl + dr1;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = j * 8 + (e & 1);
            const bool vis = c < rows && (c < sinks ? c <= (e < 2 ? hs0 : hs1)
                                                   : (c <= (e < 2 ? hi0 : hi1) && c > (e < 2 ? lo0 : lo1)));
            if (!vis) s[4 * (8 * u + j) + e] = -INFINITY;
          }
      }
    }
  }

  // After the wait for P_{n-1} V_{n-1}: O to the new maxima, P_n into the A fragments. Once a row's maximum has
  // settled its alpha is exactly 1: a warp none of whose rows moved skips the D / 2 multiplies.
  __device__ __forceinline__ void rescale_and_pack() {
    fence_registers(o);
    if (__any_sync(0xffffffffu, alpha0 != 1.f || alpha1 != 1.f)) {
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[4 * i + 0] *= alpha0;
        o[4 * i + 1] *= alpha0;
        o[4 * i + 2] *= alpha1;
        o[4 * i + 3] *= alpha1;
      }
    }
#pragma unroll
    for (int j = 0; j < kStepKeys / 8; ++j) {
      pf[j / 2][(j % 2) * 2 + 0] = pack_bf16(s[4 * j + 0], s[4 * j + 1]);
      pf[j / 2][(j % 2) * 2 + 1] = pack_bf16(s[4 * j + 2], s[4 * j + 3]);
    }
  }
};

// Issues the TMA loads of step n's K (onto bar_k) and V (onto bar_v, which may be bar_k) into stage buffers k_dst / v_dst: two
// 64-row key tiles, each as D/64 boxes of 64 x 64. A missing second tile loads rows 0.. (finite values under a
// fully masked score block); rows past the end are zero-filled by the TMA unit.
template <int D>
__device__ __forceinline__ void load_step_tiles(const PrefillBlock& blk, int n, int kvh, const CUtensorMap* tm_k,
                                                const CUtensorMap* tm_v, uint32_t k_dst, uint32_t v_dst,
                                                uint32_t bar_k, uint32_t bar_v) {
  constexpr uint32_t kTileBytes = SmemLayout<D>::step_bytes;  // of K, and as many of V
  if (bar_v == bar_k) {
    mbarrier_arrive_expect_tx(bar_k, 2 * kTileBytes);
  } else {
    mbarrier_arrive_expect_tx(bar_k, kTileBytes);
    mbarrier_arrive_expect_tx(bar_v, kTileBytes);
  }
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int t = 2 * n + u;
    const int row0 = t < blk.count ? int(blk.start(t)) : 0;
#pragma unroll
    for (int h = 0; h < D / 64; ++h) {
      const uint32_t off = h * kStepKeys * 128 + u * kKeyTileRows * 128;
      tma_load_3d(k_dst + off, tm_k, h * 64, row0, kvh, bar_k);
      tma_load_3d(v_dst + off, tm_v, h * 64, row0, kvh, bar_v);
    }
  }
}
#endif

#ifdef RTP_HAVE_WGMMA  // device code of sm_90a only, like the kernels' bodies
// Where a thread block of either kernel works, on a 1-D grid: the heaviest query block first, and consecutive
// blocks the KV-head chunks of one query block (y = KV head x head chunks). Those share their key tiles, which
// then come from L2: at 1M tokens, where a retrieval head's tiles are spread over the whole cache, the layer with
// a retrieval head took 305 ms in this order against 330 with the query blocks consecutive (one chunk at a time).
// first_head: the first query head of the block's chunk of the GQA group (read where it is needed: kept live
// across the main loop it costs the lock-step kernel a spill).
struct CtaPlace {
  int b, kvh;
  __device__ explicit CtaPlace(const PrefillArgs& a) : b(a.nb - 1 - int(blockIdx.x / ys(a))), kvh(y(a) / a.chunks_per_kv) {}
  __device__ static unsigned ys(const PrefillArgs& a) { return unsigned(a.num_kv_heads * a.chunks_per_kv); }
  __device__ static int y(const PrefillArgs& a) { return int(blockIdx.x % ys(a)); }
  __device__ static int first_head(const PrefillArgs& a) { return y(a) % a.chunks_per_kv * a.heads_per_cta; }
};

// The thread's warpgroup, through a shuffle from lane 0: ptxas then knows it is warp-uniform and keeps the Q
// descriptors derived from it in uniform registers (no register-to-uniform moves before each wgmma).
__device__ __forceinline__ int uniform_warpgroup() { return __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0); }

// Steps 1.. of a block (step 0 is peeled by the kernels): step(n, std::false_type) for the steps whose tiles all
// lie in the block's fully visible interval (PrefillBlock::unmasked_tiles), compiled without mask code;
// step(n, std::true_type) for the others (sinks and a window's start, the diagonal, a missing last tile).
template <typename Step>
__device__ __forceinline__ void run_steps(const PrefillArgs& a, const PrefillBlock& blk, int nsteps, Step&& step) {
  int first, end;
  blk.unmasked_tiles(a, first, end);
  const int n_lo = (first + 1) / 2, n_hi = end / 2;
  int n = 1;
  for (; n < n_lo; ++n) step(n, std::true_type{});
  for (; n < n_hi; ++n) step(n, std::false_type{});
  for (; n < nsteps; ++n) step(n, std::true_type{});
}
#endif

template <int D, int BS>
__global__ void __launch_bounds__(kThreadsPerCta, 1)
    sparse_prefill_wgmma_kernel(const PrefillArgs a, const __grid_constant__ CUtensorMap tm_k,
                                const __grid_constant__ CUtensorMap tm_v) {
#ifdef RTP_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  using L = SmemLayout<D>;
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = base, sK = base + L::k, sV = base + L::v;
  const int tid = threadIdx.x, wg = uniform_warpgroup(), warp = (tid % 128) / 32, lane = tid % 32;
  const CtaPlace at(a);
  const int b = at.b, kvh = at.kvh;
  const PrefillBlock blk(a, kvh, b);
  const int64_t r0 = int64_t(b) * BS;
  const int nsteps = (blk.count + 1) / 2;

  // ---- Q: row r -> query head hl = r / BS of the chunk, token r0 + r % BS ----
  load_q_rows<D, BS, kThreadsPerCta>(a, kvh, CtaPlace::first_head(a), r0, tid, [&](int r, int c) { return sQ + sw128<kRowsPerCta>(r, c); });
  cp_async_commit();
  // K/V tiles by TMA: thread 0 issues a step's boxes and the step's stage barrier completes when all their
  // bytes have landed (K and V on one barrier).
  __shared__ __align__(8) uint64_t full_bar[kStages];
  __shared__ StepMask step_mask[kStages];
  const uint32_t bar0 = smem_u32(full_bar);
  auto load_step = [&](int n, int st) {
    const uint32_t bar = bar0 + 8 * st;
    write_step_mask(a, blk, n, &step_mask[st]);
    load_step_tiles<D>(blk, n, kvh, &tm_k, &tm_v, sK + st * L::step_bytes, sV + st * L::step_bytes, bar, bar);
  };
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) mbarrier_init(bar0 + 8 * st, 1);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (tid == 0 && nsteps > 0) load_step(0, 0);

  const int g = lane / 4, t4 = lane % 4;
  const int row0 = wg * kWgRows + warp * 16 + g, row1 = row0 + 8;  // rows of the thread block
  const int64_t lrow0 = r0 + row0 % BS, lrow1 = r0 + row1 % BS;
  WarpgroupRows<D> w(row0 % BS, row1 % BS, t4);
  const uint32_t q_rows = sQ + wg * kWgRows * 128;
  auto mask_bits = [&](int st) { return static_cast<const volatile StepMask*>(step_mask)[st].bits; };

  // Step 0 is peeled so that every wait is unconditional: ptxas serializes all wgmmas of the kernel when it
  // cannot prove that an accumulator is read only after its wait.
  int stage = 0;  // of step n; three stages: n + 1 loads while n and V_{n-1} are read
  // After the block barrier every warpgroup is past its product with V_{n-2}: thread 0 refills that stage with
  // step n + 1, then all wait for step n's bytes.
  auto begin_step = [&](int n) {
    if (n == 0) {  // Q came by cp.async (generic proxy); wgmma reads it through the async proxy
      cp_async_wait<0>();
      fence_proxy_async_smem();
    }
    __syncthreads();
    if (tid == 0 && n + 1 < nsteps) load_step(n + 1, stage == kStages - 1 ? 0 : stage + 1);
    mbarrier_wait(bar0 + 8 * stage, uint32_t(n / kStages) & 1u);
  };

  if (nsteps > 0) {
    begin_step(0);
    w.issue_qk(q_rows, sK);
    wgmma_wait<0>();
    w.template softmax_in_place<true>(a, &step_mask[0], mask_bits(0));
    w.rescale_and_pack();
    auto step = [&](int n, auto masked) {
      const int prev = stage;
      stage = stage == kStages - 1 ? 0 : stage + 1;
      begin_step(n);
      const uint32_t bits = decltype(masked)::value ? mask_bits(stage) : 0u;
      w.issue_qk(q_rows, sK + stage * L::step_bytes);
      w.issue_pv(sV + prev * L::step_bytes);
      wgmma_wait<1>();  // S_n done (groups retire in order); P_{n-1} V_{n-1} may still run
      w.template softmax_in_place<decltype(masked)::value>(a, &step_mask[stage], bits);
      wgmma_wait<0>();
      w.rescale_and_pack();
    };
    run_steps(a, blk, nsteps, step);
    w.issue_last_pv(sV + stage * L::step_bytes);
    w.wait_last_pv();
  }
  cp_async_wait<0>();

  // ---- epilogue ----
  store_o_rows<D, BS>(a, kvh, CtaPlace::first_head(a), row0, lrow0, lrow1, t4, w.l0, w.l1, [&](int i, int e) { return w.o[4 * i + e]; });
#endif  // RTP_HAVE_WGMMA
}

// FlashAttention-3's structure on the same steps: a producer warpgroup (its registers given to the others) issues
// every step's K and V loads as soon as the consumers hand a stage back, and two consumer warpgroups of 64 rows
// take turns on the tensor cores (named barriers): one issues S_n and P_{n-1} V_{n-1} while the other computes
// its softmax, so the tensor pipe is not idle while both exponentiate. No block-wide barrier in the loop.
constexpr int kWsThreadsPerCta = 128 * (kWarpgroups + 1);
constexpr int kProducerRegisters = 24, kConsumerRegisters = 240;  // 128 x 24 + 256 x 240 <= 65536
static_assert(128 * kProducerRegisters + 256 * kConsumerRegisters <= 65536, "register file per SM");
enum : int { kBarrierQReady = 1, kBarrierTurn0 = 2 };  // named barriers; kBarrierTurn0 + c: consumer c's turn

template <int D, int BS>
__global__ void __launch_bounds__(kWsThreadsPerCta, 1)
    sparse_prefill_wgmma_ws_kernel(const PrefillArgs a, const __grid_constant__ CUtensorMap tm_k,
                                   const __grid_constant__ CUtensorMap tm_v) {
#ifdef RTP_HAVE_WGMMA
  extern __shared__ unsigned char smem_raw[];
  using L = SmemLayout<D>;
  const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
  const uint32_t sQ = base, sK = base + L::k, sV = base + L::v;
  const int tid = threadIdx.x, wg = uniform_warpgroup(), warp = (tid % 128) / 32, lane = tid % 32;
  const CtaPlace at(a);
  const int b = at.b, kvh = at.kvh;
  const PrefillBlock blk(a, kvh, b);
  const int64_t r0 = int64_t(b) * BS;
  const int nsteps = (blk.count + 1) / 2;

  // Per stage: K landed, V landed (separate, so S_n need not wait for V_n), stage free again (one arrival per
  // consumer warp once its P V of the stage has retired); and the step's mask bits, written by the producer before
  // its arrival on K-landed (a release the consumers' wait acquires), so the consumers spend nothing per step on
  // finding out that a step needs no mask.
  __shared__ __align__(8) uint64_t bars[3 * kStages];
  __shared__ StepMask step_mask[kStages];
  const uint32_t full_k = smem_u32(bars), full_v = full_k + 8 * kStages, empty = full_v + 8 * kStages;
  constexpr uint32_t kConsumerWarps = 4 * kWarpgroups;
  if (tid == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbarrier_init(full_k + 8 * st, 1);
      mbarrier_init(full_v + 8 * st, 1);
      mbarrier_init(empty + 8 * st, kConsumerWarps);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // ---- producer ----
    warpgroup_release_registers<kProducerRegisters>();
    if (tid == 0) {
      int st = 0;
      for (int n = 0; n < nsteps; ++n) {
        if (n >= kStages) mbarrier_wait(empty + 8 * st, uint32_t(n / kStages - 1) & 1u);
        write_step_mask(a, blk, n, &step_mask[st]);
        load_step_tiles<D>(blk, n, kvh, &tm_k, &tm_v, sK + st * L::step_bytes, sV + st * L::step_bytes,
                           full_k + 8 * st, full_v + 8 * st);
        st = st == kStages - 1 ? 0 : st + 1;
      }
    }
    return;
  }

  // ---- consumers ----
  warpgroup_claim_registers<kConsumerRegisters>();
  const int cw = wg - 1, ctid = tid - 128;
  constexpr int kConsumerThreads = 128 * kWarpgroups;
  load_q_rows<D, BS, kConsumerThreads>(a, kvh, CtaPlace::first_head(a), r0, ctid, [&](int r, int c) { return sQ + sw128<kRowsPerCta>(r, c); });
  cp_async_commit();
  cp_async_wait<0>();
  fence_proxy_async_smem();  // Q came by cp.async (generic proxy); wgmma reads it through the async proxy
  named_barrier_sync(kBarrierQReady, kConsumerThreads);

  const int g = lane / 4, t4 = lane % 4;
  const int row0 = cw * kWgRows + warp * 16 + g, row1 = row0 + 8;
  const int64_t lrow0 = r0 + row0 % BS, lrow1 = r0 + row1 % BS;
  WarpgroupRows<D> w(row0 % BS, row1 % BS, t4);
  const uint32_t q_rows = sQ + cw * kWgRows * 128;
  auto mask_bits = [&](int st) { return static_cast<const volatile StepMask*>(step_mask)[st].bits; };

  // Turns: consumer c issues its products between a sync on its own barrier and an arrival on the other's.
  // Consumer 1 opens consumer 0's first turn and skips its own last arrival, so every barrier ends with as many
  // arrivals as syncs.
  const int my_turn = kBarrierTurn0 + cw, other_turn = kBarrierTurn0 + (cw ^ 1);
  auto end_turn = [&](bool last) {
    if (!(last && cw == 1)) named_barrier_arrive(other_turn, kConsumerThreads);
  };
  auto release = [&](int st) {
    if (lane == 0) mbarrier_arrive(empty + 8 * st);
  };

  if (nsteps > 0) {
    if (cw == 1) named_barrier_arrive(other_turn, kConsumerThreads);
    int stage = 0;
    mbarrier_wait(full_k, 0);
    uint32_t bits = mask_bits(0);
    named_barrier_sync(my_turn, kConsumerThreads);
    w.issue_qk(q_rows, sK);
    end_turn(false);
    wgmma_wait<0>();
    w.template softmax_in_place<true>(a, &step_mask[0], bits);
    w.rescale_and_pack();
    auto step = [&](int n, auto masked) {
      const int prev = stage;
      stage = stage == kStages - 1 ? 0 : stage + 1;
      mbarrier_wait(full_k + 8 * stage, uint32_t(n / kStages) & 1u);
      const uint32_t bits = decltype(masked)::value ? mask_bits(stage) : 0u;
      mbarrier_wait(full_v + 8 * prev, uint32_t((n - 1) / kStages) & 1u);
      named_barrier_sync(my_turn, kConsumerThreads);
      w.issue_qk(q_rows, sK + stage * L::step_bytes);
      w.issue_pv(sV + prev * L::step_bytes);
      end_turn(false);
      wgmma_wait<1>();  // S_n done (groups retire in order); P_{n-1} V_{n-1} may still run
      w.template softmax_in_place<decltype(masked)::value>(a, &step_mask[stage], bits);
      wgmma_wait<0>();
      release(prev);
      w.rescale_and_pack();
    };
    run_steps(a, blk, nsteps, step);
    mbarrier_wait(full_v + 8 * stage, uint32_t((nsteps - 1) / kStages) & 1u);
    named_barrier_sync(my_turn, kConsumerThreads);
    w.issue_last_pv(sV + stage * L::step_bytes);
    end_turn(true);
    w.wait_last_pv();
  }

  // ---- epilogue ----
  store_o_rows<D, BS>(a, kvh, CtaPlace::first_head(a), row0, lrow0, lrow1, t4, w.l0, w.l1, [&](int i, int e) { return w.o[4 * i + e]; });
#endif  // RTP_HAVE_WGMMA
}

// Tensor map of a [heads, rows, D] bf16 tensor with the given strides (elements), read in boxes of 64 rows x 64
// dims with the 128-byte swizzle the kernel's shared-memory layout uses. False where the TMA unit cannot
// address it (alignment, sizes) or the driver lacks the entry point.
bool encode_kv_map(CUtensorMap* map, const void* base, int64_t heads, int64_t rows, int64_t D, int64_t row_stride,
                   int64_t head_stride) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (!encode || reinterpret_cast<uintptr_t>(base) % 16 || rows >= (int64_t(1) << 31) || heads >= (int64_t(1) << 31))
    return false;
  const cuuint64_t dims[3] = {cuuint64_t(D), cuuint64_t(rows), cuuint64_t(heads)};
  const cuuint64_t strides[2] = {cuuint64_t(row_stride * 2), cuuint64_t(head_stride * 2)};  // bytes, dims 1..2
  const cuuint32_t box[3] = {64, cuuint32_t(kKeyTileRows), 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box, elem_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
}  // namespace

cudaError_t launch_prefill_wgmma(const SparseAttentionParams& p, const PrefillArgs& a, cudaStream_t stream) {
  if (a.heads_per_cta * p.block_size != kRowsPerCta) return cudaErrorInvalidValue;  // args made for another block shape
  CUtensorMap tm_k, tm_v;
  if (!encode_kv_map(&tm_k, a.k, p.num_kv_heads, a.krows, p.head_dim, a.krs, a.khs) ||
      !encode_kv_map(&tm_v, a.v, p.num_kv_heads, a.krows, p.head_dim, a.vrs, a.vhs))
    return cudaErrorNotSupported;
  const int D = p.head_dim;
  const bool ws = p.prefill_kernel != PrefillKernel::WGMMA;  // AUTO: the warp-specialised kernel (faster)
  void (*kern)(PrefillArgs, CUtensorMap, CUtensorMap) = nullptr;
  if (ws) {
    if (D == 128 && p.block_size == 64) kern = sparse_prefill_wgmma_ws_kernel<128, 64>;
    else if (D == 128) kern = sparse_prefill_wgmma_ws_kernel<128, 128>;
    else if (p.block_size == 64) kern = sparse_prefill_wgmma_ws_kernel<64, 64>;
    else kern = sparse_prefill_wgmma_ws_kernel<64, 128>;
  } else {
    if (D == 128 && p.block_size == 64) kern = sparse_prefill_wgmma_kernel<128, 64>;
    else if (D == 128) kern = sparse_prefill_wgmma_kernel<128, 128>;
    else if (p.block_size == 64) kern = sparse_prefill_wgmma_kernel<64, 64>;
    else kern = sparse_prefill_wgmma_kernel<64, 128>;
  }
  const size_t smem = (D == 128 ? SmemLayout<128>::total : SmemLayout<64>::total) + 1024;  // + alignment slack
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  const unsigned blocks = unsigned(int64_t(a.nb) * p.num_kv_heads * a.chunks_per_kv);  // CtaPlace
  kern<<<blocks, ws ? kWsThreadsPerCta : kThreadsPerCta, smem, stream>>>(a, tm_k, tm_v);
  return cudaGetLastError();
}

}  // namespace rtp::kernels::cuda_detail

namespace rtp::kernels {
bool prefill_wgmma_available() {
#ifdef RTPURBO_HAVE_SM90A
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) return false;
  return major == 9 && minor == 0;  // sm_90a code runs on exactly compute capability 9.0
#else
  return false;
#endif
}
}  // namespace rtp::kernels
