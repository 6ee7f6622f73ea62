#pragma once
// What the two block-sparse prefill kernels (mma.sync and wgmma) share: their arguments, the list of 64-row key
// tiles a thread block visits, and the visibility rules of sparse_attention_params.h in key rows and positions
// (the last two in prefill_tiles.h).
// Thread blocks cover one query block of `heads_per_cta` query heads of one GQA group, so the key tiles depend
// only on (KV head, query block).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda_common.cuh"
#include "prefill_tiles.h"
#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels::cuda_detail {

struct PrefillArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* o;
  int64_t qhs, qrs, khs, krs, vhs, vrs, ohs, ors;
  int64_t Tq, q_off;       // query rows, position of row 0
  int64_t S, skip, krows;  // key row r >= S holds position r + skip; krows rows
  int G, heads_per_cta, chunks_per_kv, nb;  // nb: query blocks of this call
  int num_kv_heads;
  int block_size;
  float scale_log2;
  int64_t sink, window;
  const int32_t* counts;
  const int32_t* indices;
  int max_blocks;
  int8_t kind[kMaxKvHeads];
  int8_t slot[kMaxKvHeads];
  int8_t q_group[kMaxKvHeads];  // query group of each KV head (SparseAttentionParams::q_group)
};

// Fills the arguments for thread blocks of `rows_per_cta` query rows; false when a stride breaks the 16-byte
// alignment the kernels' vector loads need.
inline bool make_prefill_args(const SparseAttentionParams& p, int rows_per_cta, PrefillArgs* out) {
  const int64_t T = p.seq_len, D = p.head_dim, Tq = T - p.q_offset, krows = T - p.stream_key_skip;
  PrefillArgs a{};
  a.q = static_cast<const __nv_bfloat16*>(p.q);
  a.k = static_cast<const __nv_bfloat16*>(p.k);
  a.v = static_cast<const __nv_bfloat16*>(p.v);
  a.o = static_cast<__nv_bfloat16*>(p.o);
  a.qhs = p.q_head_stride ? p.q_head_stride : Tq * D;
  a.khs = p.k_head_stride ? p.k_head_stride : krows * D;
  a.vhs = p.v_head_stride ? p.v_head_stride : krows * D;
  a.ohs = p.o_head_stride ? p.o_head_stride : Tq * D;
  a.qrs = p.q_row_stride ? p.q_row_stride : D;
  a.krs = p.k_row_stride ? p.k_row_stride : D;
  a.vrs = p.v_row_stride ? p.v_row_stride : D;
  a.ors = p.o_row_stride ? p.o_row_stride : D;
  for (int64_t s : {a.qrs, a.krs, a.vrs, a.ors, a.qhs, a.khs, a.vhs, a.ohs})
    if (s % 8) return false;
  a.Tq = Tq;
  a.q_off = p.q_offset;
  a.S = T < p.sink ? T : p.sink;
  a.skip = p.stream_key_skip;
  a.krows = krows;
  a.G = p.num_q_heads / p.num_kv_heads;
  a.num_kv_heads = int(p.num_kv_heads);
  a.block_size = p.block_size;
  a.heads_per_cta = rows_per_cta / p.block_size;
  a.chunks_per_kv = (a.G + a.heads_per_cta - 1) / a.heads_per_cta;
  a.nb = int((Tq + p.block_size - 1) / p.block_size);
  const float scale = p.scale > 0 ? p.scale : 1.f / std::sqrt(float(D));
  a.scale_log2 = scale * 1.4426950408889634f;
  a.sink = p.sink;
  a.window = p.window;
  a.counts = p.block_counts;
  a.indices = p.block_indices;
  a.max_blocks = p.max_blocks;
  for (int g = 0, r = 0; g < p.num_kv_heads; ++g) {
    a.kind[g] = int8_t(p.head_kind[g]);
    a.slot[g] = int8_t(p.head_kind[g] == HeadKind::RETRIEVAL ? r++ : -1);
    a.q_group[g] = int8_t(p.q_group ? p.q_group[g] : g);
  }
  *out = a;
  return true;
}

// The kernels' tiles (the struct is CUDA-free so that the CPU build can test it).
using PrefillBlock = PrefillTiles<PrefillArgs>;

// Q of a thread block by cp.async (the caller commits): row r = hl * BS + i of shared memory holds query row
// r0 + i of query head hp0 + hl of the KV head's group; rows past the end read as zero. smem_byte(r, c) places
// 16-byte chunk c of row r (the kernel's swizzle).
template <int D, int BS, int THREADS, typename SmemByte>
__device__ __forceinline__ void load_q_rows(const PrefillArgs& a, int kvh, int hp0, int64_t r0, int tid, SmemByte smem_byte) {
  constexpr int CPR = D / 8;
  for (int hl = 0; hl < a.heads_per_cta; ++hl) {
    const int hh = min(hp0 + hl, a.G - 1);
    const __nv_bfloat16* qg = a.q + int64_t(a.q_group[kvh] * a.G + hh) * a.qhs;
    for (int idx = tid; idx < BS * CPR; idx += THREADS) {
      const int r = idx / CPR, c = idx % CPR;
      const int64_t row = r0 + r;
      const bool ok = row < a.Tq;
      cp_async16(smem_byte(hl * BS + r, c), qg + (ok ? row : 0) * a.qrs + c * 8, ok ? 16 : 0);
    }
  }
}

// Online softmax, one thread's two rows (log2 domain): mx0/mx1 hold this thread's maxima including the running
// m0/m1; the four threads of a row agree on the new maxima. ref: what the step's scores are exponentiated
// against (0 for a row without a visible key yet, so exp2 stays finite); alpha: the factor for the row's earlier
// sum and output.
template <typename Exp2>
__device__ __forceinline__ void online_row_max(float& m0, float& m1, float mx0, float mx1, float& ref0, float& ref1,
                                               float& alpha0, float& alpha1, Exp2 exp2) {
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  ref0 = mx0 == -INFINITY ? 0.f : mx0;
  ref1 = mx1 == -INFINITY ? 0.f : mx1;
  alpha0 = exp2(m0 - ref0);
  alpha1 = exp2(m1 - ref1);
  m0 = mx0;
  m1 = mx1;
}

// Epilogue for one thread's two rows of the block (thread-block rows row0 and row0 + 8, query rows lrow0/lrow1):
// sums the row's quad, normalises and writes bf16 pairs. acc(i, e): the accumulator element of columns
// 8i + 2 t4 + (e & 1), row0 for e < 2 and row0 + 8 for e >= 2 (the mma m16n8 / wgmma layout).
template <int D, int BS, typename Acc>
__device__ __forceinline__ void store_o_rows(const PrefillArgs& a, int kvh, int hp0, int row0, int64_t lrow0, int64_t lrow1,
                                             int t4, float l0, float l1, Acc acc) {
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  const int hl0 = row0 / BS, hl1 = (row0 + 8) / BS;
  const bool ok0 = lrow0 < a.Tq && hp0 + hl0 < a.G && hl0 < a.heads_per_cta;
  const bool ok1 = lrow1 < a.Tq && hp0 + hl1 < a.G && hl1 < a.heads_per_cta;
  const int64_t head0 = int64_t(a.q_group[kvh]) * a.G + hp0;
  __nv_bfloat16* o0 = a.o + (head0 + hl0) * a.ohs + lrow0 * a.ors;
  __nv_bfloat16* o1 = a.o + (head0 + hl1) * a.ohs + lrow1 * a.ors;
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
    const int d = i * 8 + 2 * t4;
    if (ok0) *reinterpret_cast<uint32_t*>(o0 + d) = pack_bf16(acc(i, 0) * inv0, acc(i, 1) * inv0);
    if (ok1) *reinterpret_cast<uint32_t*>(o1 + d) = pack_bf16(acc(i, 2) * inv1, acc(i, 3) * inv1);
  }
}

#ifdef RTPURBO_WITH_CUDA
// The wgmma kernel (sm_90a builds on a compute-capability 9.0 device); launched by sparse_attention_cuda.
// cudaErrorNotSupported: the K/V layout cannot be described to the TMA unit (the mma.sync kernel can run it).
cudaError_t launch_prefill_wgmma(const SparseAttentionParams& p, const PrefillArgs& a, cudaStream_t stream);
#endif

}  // namespace rtp::kernels::cuda_detail
