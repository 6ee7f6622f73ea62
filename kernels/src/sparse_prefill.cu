// Block-sparse causal prefill attention, FA2-style (the kernel for GPUs other than Hopper, where
// sparse_prefill_wgmma.cu runs): mma.sync m16n8k16 bf16 with fp32 accumulation, ldmatrix,
// cp.async double buffering of 64-key K/V tiles, online softmax in registers.
// One thread block = 8 warps = 128 query rows = (128 / block_size) query heads of one GQA group times one
// query block, so every K/V tile it loads serves all its heads. Streaming, dense and retrieval KV heads run
// in the same launch: each thread block derives its own list of key tiles from its head's kind.
// Chunked prefill: query rows are positions q_off.., key tiles are 64 key *rows*, and each key's position comes
// from its row (streaming rows may skip tokens after the sinks), so the masks work in positions throughout.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "cuda_common.cuh"
#include "sparse_prefill_common.cuh"
#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels {
namespace {
using namespace cuda_detail;

constexpr int kRows = 128;   // query rows per thread block
constexpr int kTileK = kKeyTileRows;  // keys per tile
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

// Swizzled offset (in 16-byte chunks) of chunk c of row r in a [rows][D] bf16 tile.
template <int D>
__device__ __forceinline__ int swz(int r, int c) {
  return r * (D / 8) + (c ^ (r & 7));
}

template <int D>
__device__ __forceinline__ void load_tile(uint32_t sbase, const __nv_bfloat16* g, int64_t row_stride, int64_t row0,
                                          int nrows, int64_t rows_total, int tid) {
  constexpr int CPR = D / 8;  // chunks per row
  for (int idx = tid; idx < nrows * CPR; idx += kThreads) {
    const int r = idx / CPR, c = idx % CPR;
    const int64_t row = row0 + r;
    const bool ok = row < rows_total;
    const __nv_bfloat16* src = g + (ok ? row : 0) * row_stride + c * 8;
    cp_async16(sbase + swz<D>(r, c) * 16, src, ok ? 16 : 0);
  }
}

template <int D, int BS>
__global__ void __launch_bounds__(kThreads, (D == 128 ? 1 : 2)) sparse_prefill_kernel(const PrefillArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* sK = sQ + kRows * D;        // 2 stages
  __nv_bfloat16* sV = sK + 2 * kTileK * D;   // 2 stages
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // 1-D grid: heaviest query blocks first, the KV-head chunks of one query block consecutive (shared key tiles
  // through L2, as in the wgmma kernels' CtaPlace)
  const unsigned ys = unsigned(a.num_kv_heads * a.chunks_per_kv), y = blockIdx.x % ys;
  const int b = a.nb - 1 - int(blockIdx.x / ys);
  const int kvh = int(y) / a.chunks_per_kv;
  const int hchunk = int(y) % a.chunks_per_kv;
  const PrefillBlock blk(a, kvh, b);
  const int64_t r0 = int64_t(b) * BS;  // first query row of the block
  const int ntiles = blk.count;
  auto tile_start = [&](int n) { return blk.start(n); };

  // ---- load Q (rows r -> head hl = r / BS, token q0 + r % BS) ----
  const int hp0 = hchunk * a.heads_per_cta;
  const uint32_t sQa = smem_u32(sQ), sKa = smem_u32(sK), sVa = smem_u32(sV);
  load_q_rows<D, BS, kThreads>(a, kvh, hp0, r0, tid, [&](int r, int c) { return sQa + swz<D>(r, c) * 16; });
  cp_async_commit();
  const __nv_bfloat16* kg = a.k + int64_t(kvh) * a.khs;
  const __nv_bfloat16* vg = a.v + int64_t(kvh) * a.vhs;
  if (ntiles > 0) {
    const int64_t s0 = tile_start(0);
    load_tile<D>(sKa, kg, a.krs, s0, kTileK, a.krows, tid);
    load_tile<D>(sVa, vg, a.vrs, s0, kTileK, a.krows, tid);
  }
  cp_async_commit();

  const int g = lane / 4, t4 = lane % 4;
  const int wrow0 = warp * 16;
  // query rows of this thread and their positions
  const int64_t lrow0 = r0 + (wrow0 + g) % BS, lrow1 = r0 + (wrow0 + g + 8) % BS;
  const int64_t tok0 = a.q_off + lrow0, tok1 = a.q_off + lrow1;

  float oacc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  for (int n = 0; n < ntiles; ++n) {
    const int stage = n & 1;
    if (n + 1 < ntiles) {
      const int64_t s1 = tile_start(n + 1);
      load_tile<D>(sKa + (stage ^ 1) * kTileK * D * 2, kg, a.krs, s1, kTileK, a.krows, tid);
      load_tile<D>(sVa + (stage ^ 1) * kTileK * D * 2, vg, a.vrs, s1, kTileK, a.krows, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t ks = tile_start(n);
    const uint32_t kbase = sKa + stage * kTileK * D * 2;
    const uint32_t vbase = sVa + stage * kTileK * D * 2;

    // S = Q K^T (16 rows x 64 keys per warp)
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t af[4];
      {
        const int r = wrow0 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int c = kk * 2 + lane / 16;
        ldmatrix_x4(sQa + swz<D>(r, c) * 16, af[0], af[1], af[2], af[3]);
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        const int r = np * 16 + (lane % 8) + (lane / 16) * 8;
        const int c = kk * 2 + (lane / 8) % 2;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4(kbase + swz<D>(r, c) * 16, b0, b1, b2, b3);
        mma_bf16_16816(s[2 * np], af, b0, b1);
        mma_bf16_16816(s[2 * np + 1], af, b2, b3);
      }
    }

    // masking: only tiles that are not fully visible to every row of the block
    if (!blk.fully_visible(a, ks)) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (!blk.visible(a, ks + j * 8 + 2 * t4 + (e & 1), e < 2 ? tok0 : tok1)) s[j][e] = -INFINITY;
    }

    // online softmax (log2 domain)
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]) * a.scale_log2);
      mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]) * a.scale_log2);
    }
    float ref0, ref1, alpha0, alpha1;
    online_row_max(m0, m1, mx0, mx1, ref0, ref1, alpha0, alpha1, [](float x) { return exp2f(x); });
    l0 *= alpha0;
    l1 *= alpha1;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      oacc[i][0] *= alpha0;
      oacc[i][1] *= alpha0;
      oacc[i][2] *= alpha1;
      oacc[i][3] *= alpha1;
    }
    uint32_t pf[4][4];  // P as A fragments, one per 16-key chunk
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float p0 = exp2f(fmaf(s[j][0], a.scale_log2, -ref0));
      const float p1 = exp2f(fmaf(s[j][1], a.scale_log2, -ref0));
      const float p2 = exp2f(fmaf(s[j][2], a.scale_log2, -ref1));
      const float p3 = exp2f(fmaf(s[j][3], a.scale_log2, -ref1));
      l0 += p0 + p1;
      l1 += p2 + p3;
      pf[j / 2][(j % 2) * 2 + 0] = pack_bf16(p0, p1);
      pf[j / 2][(j % 2) * 2 + 1] = pack_bf16(p2, p3);
    }
    // O += P V
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        const int r = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int c = dp * 2 + lane / 16;
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(vbase + swz<D>(r, c) * 16, b0, b1, b2, b3);
        mma_bf16_16816(oacc[2 * dp], pf[kk], b0, b1);
        mma_bf16_16816(oacc[2 * dp + 1], pf[kk], b2, b3);
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  // ---- epilogue ----
  store_o_rows<D, BS>(a, kvh, hp0, wrow0 + g, lrow0, lrow1, t4, l0, l1, [&](int i, int e) { return oacc[i][e]; });
}

}  // namespace

cudaError_t sparse_attention_cuda(const SparseAttentionParams& p, cudaStream_t stream) {
  if (*check_sparse_attention_params(p, true)) return cudaErrorInvalidValue;
  const int64_t D = p.head_dim;
  cuda_detail::PrefillArgs a;
  if (!cuda_detail::make_prefill_args(p, kRows, &a)) return cudaErrorInvalidValue;
  const bool wgmma = p.prefill_kernel != PrefillKernel::MMA_SYNC && prefill_wgmma_available();
  const bool asked_wgmma = p.prefill_kernel == PrefillKernel::WGMMA || p.prefill_kernel == PrefillKernel::WGMMA_WS;
  if (asked_wgmma && !wgmma) return cudaErrorInvalidDeviceFunction;
  if (wgmma) {
    const cudaError_t e = cuda_detail::launch_prefill_wgmma(p, a, stream);  // 128 rows per block too
    if (e != cudaErrorNotSupported || asked_wgmma) return e;
  }
  const unsigned grid = unsigned(int64_t(a.nb) * p.num_kv_heads * a.chunks_per_kv);
  const size_t smem = size_t(kRows * D + 4 * kTileK * D) * sizeof(__nv_bfloat16);
  void (*kern)(cuda_detail::PrefillArgs) = nullptr;
  if (D == 128 && p.block_size == 64) kern = sparse_prefill_kernel<128, 64>;
  else if (D == 128) kern = sparse_prefill_kernel<128, 128>;
  else if (p.block_size == 64) kern = sparse_prefill_kernel<64, 64>;
  else kern = sparse_prefill_kernel<64, 128>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (e != cudaSuccess) return e;
  kern<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace rtp::kernels
