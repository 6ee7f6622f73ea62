#pragma once
// What the two block-sparse prefill kernels (mma.sync and wgmma) share: their arguments, the list of 64-row key
// tiles a thread block visits, and the visibility rules of sparse_attention_params.h in key rows and positions.
// Thread blocks cover one query block of `heads_per_cta` query heads of one GQA group, so the key tiles depend
// only on (KV head, query block).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels::cuda_detail {

constexpr int kKeyTileRows = 64;  // the unit of key tiles: a block of 64 (or half of one of 128)

struct PrefillArgs {
  const __nv_bfloat16* q;
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  __nv_bfloat16* o;
  int64_t qhs, qrs, khs, krs, vhs, vrs, ohs, ors;
  int64_t Tq, q_off;       // query rows, position of row 0
  int64_t S, skip, krows;  // key row r >= S holds position r + skip; krows rows
  int G, heads_per_cta, chunks_per_kv, nb;  // nb: query blocks of this call
  int block_size;
  float scale_log2;
  int64_t sink, window;
  const int32_t* counts;
  const int32_t* indices;
  int max_blocks;
  int8_t kind[kMaxKvHeads];
  int8_t slot[kMaxKvHeads];
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
  }
  *out = a;
  return true;
}

__device__ __forceinline__ int64_t i64min(int64_t x, int64_t y) { return x < y ? x : y; }
__device__ __forceinline__ int64_t i64max(int64_t x, int64_t y) { return x > y ? x : y; }

// The key tiles (kKeyTileRows rows each, in key-row units) of query block b of KV head kvh, in visiting order,
// and the visibility rules for them. skip is 0 unless every head is streaming (the launcher checks), so row
// and position coincide for the other kinds.
struct PrefillBlock {
  int kind;
  int64_t q0, qlast;  // positions of the block's first and last query
  int count;          // tiles
  int64_t sink_tiles = 0, win_t0 = 0;
  const int32_t* list = nullptr;
  int tpb_shift;  // log2 of the key tiles per block (1 or 2 tiles)

  __device__ PrefillBlock(const PrefillArgs& a, int kvh, int b) {
    kind = a.kind[kvh];
    const int64_t r0 = int64_t(b) * a.block_size;
    q0 = a.q_off + r0;
    qlast = a.q_off + i64min(a.Tq, r0 + a.block_size) - 1;
    tpb_shift = a.block_size > kKeyTileRows ? 1 : 0;
    const int64_t last_tile = row_of(a, qlast) / kKeyTileRows;
    if (kind == int(HeadKind::DENSE)) {
      count = int(last_tile + 1);
    } else if (kind == int(HeadKind::STREAMING)) {
      sink_tiles = i64min((a.S + kKeyTileRows - 1) / kKeyTileRows, last_tile + 1);
      // the launcher's check puts the first window position at or after the skipped tokens
      win_t0 = i64max(sink_tiles, row_of(a, i64max(0, q0 - a.window + 1)) / kKeyTileRows);
      count = int(sink_tiles + (last_tile + 1 - win_t0));
    } else {
      const int64_t li = int64_t(a.slot[kvh]) * a.nb + b;
      list = a.indices + li * a.max_blocks;
      count = a.counts[li] << tpb_shift;
    }
  }
  __device__ static int64_t pos_of(const PrefillArgs& a, int64_t row) { return row < a.S ? row : row + a.skip; }
  // Only for positions that are sinks or at/after the first window: the skipped ones have no row.
  __device__ static int64_t row_of(const PrefillArgs& a, int64_t pos) { return pos < a.S ? pos : pos - a.skip; }

  // First key row of tile n.
  __device__ int64_t start(int n) const {
    if (kind == int(HeadKind::DENSE)) return int64_t(n) * kKeyTileRows;
    if (kind == int(HeadKind::STREAMING)) return (n < sink_tiles ? n : win_t0 + (n - sink_tiles)) * kKeyTileRows;
    return int64_t(__ldg(list + (n >> tpb_shift))) * (int64_t(kKeyTileRows) << tpb_shift) +
           (n & ((1 << tpb_shift) - 1)) * kKeyTileRows;
  }
  // Whether every key of the tile starting at row ks is visible to every query of the block (no masking needed).
  __device__ bool fully_visible(const PrefillArgs& a, int64_t ks) const {
    const int64_t kend = ks + kKeyTileRows - 1;
    // a tile straddling the sinks and the skipped tokens holds non-consecutive positions: always masked
    const bool consecutive = a.skip == 0 || kend < a.S || ks >= a.S;
    const int64_t p0 = pos_of(a, ks), p1 = pos_of(a, kend);
    bool full = consecutive && p1 <= q0 && kend < a.krows;
    if (kind == int(HeadKind::STREAMING)) full = full && (p1 < a.sink || p0 > qlast - a.window);
    return full;
  }
  // Whether key row krow is visible to the query at position tok (the block lists are already applied).
  __device__ bool visible(const PrefillArgs& a, int64_t krow, int64_t tok) const {
    const int64_t key = pos_of(a, krow);
    bool vis = key <= tok && krow < a.krows;
    if (kind == int(HeadKind::STREAMING)) vis = vis && (key < a.sink || key > tok - a.window);
    return vis;
  }
};

#ifdef RTPURBO_WITH_CUDA
// The wgmma kernel (sm_90a builds on a compute-capability 9.0 device); launched by sparse_attention_cuda.
// cudaErrorNotSupported: the K/V layout cannot be described to the TMA unit (the mma.sync kernel can run it).
cudaError_t launch_prefill_wgmma(const SparseAttentionParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels::cuda_detail
