#pragma once
// The key tiles of the block-sparse prefill kernels (sparse_prefill.cu, sparse_prefill_wgmma.cu) and their
// visibility rules in key rows and positions. Plain C++17, free of CUDA headers, so that a CPU-only build can
// test the tile logic against the definition in sparse_attention_params.h (tests/kernels/prefill_tiles_test.cpp);
// the kernels instantiate it with their PrefillArgs (sparse_prefill_common.cuh), the test with its own struct
// of the same fields.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"

#ifdef __CUDACC__
#define RTP_TILES_HD __host__ __device__ __forceinline__
#else
#define RTP_TILES_HD inline
#endif
// __ldg exists in device code only; nvcc's host pass and the host compiler read the list plainly.
#ifdef __CUDA_ARCH__
#define RTP_TILES_LDG(p) __ldg(p)
#else
#define RTP_TILES_LDG(p) (*(p))
#endif

namespace rtp::kernels::cuda_detail {

constexpr int kKeyTileRows = 64;  // the unit of key tiles: a block of 64 (or half of one of 128)

RTP_TILES_HD int64_t i64min(int64_t x, int64_t y) { return x < y ? x : y; }
RTP_TILES_HD int64_t i64max(int64_t x, int64_t y) { return x > y ? x : y; }

// The key tiles (kKeyTileRows rows each, in key-row units) of query block b of KV head kvh, in visiting order,
// and the visibility rules for them. skip is 0 unless every head is streaming (the launcher checks), so row
// and position coincide for the other kinds.
// Args: PrefillArgs or a struct with its fields kind, slot, block_size, q_off, Tq, S, skip, krows, sink, window,
// nb, counts, indices, max_blocks.
template <class Args>
struct PrefillTiles {
  int kind;
  int64_t q0, qlast;  // positions of the block's first and last query
  int count;          // tiles
  int64_t sink_tiles = 0, win_t0 = 0;
  const int32_t* list = nullptr;
  int64_t last_block = 0;  // RETRIEVAL: the last key block the query block sees (list entries are clamped to it)
  int tpb_shift;  // log2 of the key tiles per block (1 or 2 tiles)

  RTP_TILES_HD PrefillTiles(const Args& a, int kvh, int b) {
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
      // Lists on the GPU are not checked by the ops (a copy back per call): a count outside [0, max_blocks] or an
      // entry outside [0, last_block] is clamped, so that lists that break the contract give a wrong result, never
      // a read outside k and v (a fault there ends the CUDA context). Lists that keep it are unchanged.
      const int64_t li = int64_t(a.slot[kvh]) * a.nb + b;
      list = a.indices + li * a.max_blocks;
      last_block = row_of(a, qlast) / a.block_size;
      const int n = a.counts[li];
      count = (n < 0 ? 0 : n > a.max_blocks ? a.max_blocks : n) << tpb_shift;
    }
  }
  RTP_TILES_HD static int64_t pos_of(const Args& a, int64_t row) { return row < a.S ? row : row + a.skip; }
  // Only for positions that are sinks or at/after the first window: the skipped ones have no row.
  RTP_TILES_HD static int64_t row_of(const Args& a, int64_t pos) { return pos < a.S ? pos : pos - a.skip; }

  // First key row of tile n.
  RTP_TILES_HD int64_t start(int n) const {
    if (kind == int(HeadKind::DENSE)) return int64_t(n) * kKeyTileRows;
    if (kind == int(HeadKind::STREAMING)) return (n < sink_tiles ? n : win_t0 + (n - sink_tiles)) * kKeyTileRows;
    const int64_t blk = i64max(0, i64min(last_block, int64_t(RTP_TILES_LDG(list + (n >> tpb_shift)))));
    return blk * (int64_t(kKeyTileRows) << tpb_shift) + (n & ((1 << tpb_shift) - 1)) * kKeyTileRows;
  }
  // Whether every key of the tile starting at row ks is visible to every query of the block (no masking needed).
  RTP_TILES_HD bool fully_visible(const Args& a, int64_t ks) const {
    const int64_t kend = ks + kKeyTileRows - 1;
    // a tile straddling the sinks and the skipped tokens holds non-consecutive positions: always masked
    const bool consecutive = a.skip == 0 || kend < a.S || ks >= a.S;
    const int64_t p0 = pos_of(a, ks), p1 = pos_of(a, kend);
    bool full = consecutive && p1 <= q0 && kend < a.krows;
    if (kind == int(HeadKind::STREAMING)) full = full && (p1 < a.sink || p0 > qlast - a.window);
    return full;
  }
  // Tiles [first, end) are fully visible; the others may need masks. Tile starts ascend, so for the dense and
  // retrieval kinds the fully visible tiles are a prefix (they end at or before the block's first query and
  // inside the cache) and for the streaming kind an interval of its window tiles (from the first tile past
  // every row's window start to the diagonal); its sink tiles count as masked. Each scan stops at the first
  // fully visible tile, so it visits only the few tiles that need masks.
  RTP_TILES_HD void unmasked_tiles(const Args& a, int& first, int& end) const {
    first = kind == int(HeadKind::STREAMING) ? int(sink_tiles) : 0;
    while (first < count && !fully_visible(a, start(first))) ++first;
    end = count;
    while (end > first && !fully_visible(a, start(end - 1))) --end;
  }
  // Whether key row krow is visible to the query at position tok (the block lists are already applied).
  RTP_TILES_HD bool visible(const Args& a, int64_t krow, int64_t tok) const {
    const int64_t key = pos_of(a, krow);
    bool vis = key <= tok && krow < a.krows;
    if (kind == int(HeadKind::STREAMING)) vis = vis && (key < a.sink || key > tok - a.window);
    return vis;
  }
};

}  // namespace rtp::kernels::cuda_detail
