// The key tiles of the CUDA prefill kernels (kernels/src/prefill_tiles.h) against the visibility rules of
// sparse_attention_params.h, written again here as plain loops over token positions. The GPU tests see the tile
// logic only through attention outputs on a few shapes, and CI has no GPU; this test runs the kernels' own code on
// the host over many random calls and checks it key by key.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "prefill_tiles.h"
#include "rtp/kernels/sparse_attention_params.h"

using rtp::kernels::HeadKind;
using rtp::kernels::kMaxKvHeads;
using rtp::kernels::cuda_detail::kKeyTileRows;

namespace {

// A prefill call: the fields of SparseAttentionParams that decide which keys a query sees.
struct Call {
  int64_t T = 0, q_offset = 0, sink = 0, window = 1, skip = 0;
  int B = 64;
  std::vector<HeadKind> kinds;
  // Retrieval lists as the params header lays them out: [Hkv_ret, nqb] and [Hkv_ret, nqb, max_blocks].
  std::vector<int32_t> counts, indices;
  int max_blocks = 0;

  int64_t nqb() const { return (T - q_offset + B - 1) / B; }
  std::string describe() const {
    std::ostringstream s;
    s << "T=" << T << " B=" << B << " q_offset=" << q_offset << " sink=" << sink << " window=" << window
      << " skip=" << skip << " kinds=";
    for (HeadKind k : kinds) s << "DSR"[int(k)];
    return s.str();
  }
};

// The fields of the kernels' PrefillArgs that PrefillTiles reads.
struct TileArgs {
  int64_t Tq, q_off, S, skip, krows;
  int nb, block_size;
  int64_t sink, window;
  const int32_t* counts;
  const int32_t* indices;
  int max_blocks;
  int8_t kind[kMaxKvHeads];
  int8_t slot[kMaxKvHeads];
};

// Filled from the params header's definitions (make_prefill_args needs the CUDA headers).
TileArgs tile_args(const Call& c) {
  TileArgs a{};
  a.Tq = c.T - c.q_offset;
  a.q_off = c.q_offset;
  a.S = std::min(c.sink, c.T);
  a.skip = c.skip;
  a.krows = c.T - c.skip;
  a.nb = int(c.nqb());
  a.block_size = c.B;
  a.sink = c.sink;
  a.window = c.window;
  a.counts = c.counts.data();
  a.indices = c.indices.data();
  a.max_blocks = c.max_blocks;
  for (int h = 0, r = 0; h < int(c.kinds.size()); ++h) {
    a.kind[h] = int8_t(c.kinds[h]);
    a.slot[h] = int8_t(c.kinds[h] == HeadKind::RETRIEVAL ? r++ : -1);
  }
  return a;
}

// Reference, straight from sparse_attention_params.h ------------------------------------------------------------

// The token each key row holds: every token 0..T-1 in order except the ones a streaming call leaves out,
// S..S+skip-1 with S = min(sink, T).
std::vector<int64_t> row_tokens(const Call& c) {
  const int64_t S = std::min(c.sink, c.T);
  std::vector<int64_t> tok;
  for (int64_t j = 0; j < c.T; ++j)
    if (j < S || j >= S + c.skip) tok.push_back(j);
  return tok;
}

// Whether key j is visible to query i for a head of `kind`; `selected[c]`: key block c is in the list of i's
// query block (RETRIEVAL only).
bool ref_visible(HeadKind kind, const Call& c, const std::vector<char>& selected, int64_t i, int64_t j) {
  if (j > i) return false;
  if (kind == HeadKind::STREAMING) return j < c.sink || j > i - c.window;
  if (kind == HeadKind::RETRIEVAL) return selected[size_t(j / c.B)] != 0;
  return true;
}

// Random calls the launchers accept ------------------------------------------------------------------------------

// Uniform in [lo, hi]. By hand, like shuffle below: the std distributions and std::shuffle differ between standard
// libraries, and the calls should be the same everywhere.
int64_t uniform(std::mt19937& g, int64_t lo, int64_t hi) { return lo + int64_t(g() % uint32_t(hi - lo + 1)); }

void shuffle(std::vector<HeadKind>& v, std::mt19937& g) {
  for (size_t n = v.size(); n > 1; --n) std::swap(v[n - 1], v[size_t(uniform(g, 0, int64_t(n) - 1))]);
}

enum Shape { kAllDense, kAllStreaming, kStreamingSkip, kAllRetrieval, kMixed, kMixedNoRetrieval, kShapes };

// Preconditions (check_sparse_attention_params), and what each keeps out of the test:
//  - q_offset in [0, T), and a multiple of block_size when some head is RETRIEVAL: calls with retrieval heads
//    use such offsets only; the others also get offsets that are not multiples of the block size.
//  - stream_key_skip > 0 only when every KV head is STREAMING, and S + skip <= max(S, q_offset - window + 1)
//    (the tokens left out are older than the first query's window): kStreamingSkip draws the skip within
//    that bound (half of the time at it); every other shape has skip = 0.
//  - window >= 1, sink >= 0; the lists ascend, are unique, hold block 0 and the diagonal block, and fit in
//    max_blocks.
Call random_call(std::mt19937& g, Shape shape) {
  static const int64_t kSinks[] = {0, 4, 70};
  static const int64_t kWindows[] = {1, 5, 37, 63, 64, 65, 100, 129, 200, 333, 700, 5000};
  for (;;) {
    Call c;
    c.B = uniform(g, 0, 1) ? 128 : 64;
    // mostly not a multiple of the block size; some ends exactly on a block boundary
    c.T = uniform(g, 0, 4) == 0 ? c.B * uniform(g, 1, 1100 / c.B) : uniform(g, 1, 1100);
    c.sink = kSinks[uniform(g, 0, 2)];
    c.window = kWindows[uniform(g, 0, 11)];
    int nh = int(uniform(g, 1, 4));
    switch (shape) {
      case kAllDense: c.kinds.assign(nh, HeadKind::DENSE); break;
      case kAllStreaming:
      case kStreamingSkip: c.kinds.assign(nh, HeadKind::STREAMING); break;
      case kAllRetrieval: c.kinds.assign(nh, HeadKind::RETRIEVAL); break;
      case kMixed:
        c.kinds = {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL};
        for (int h = 0; h < nh; ++h) c.kinds.push_back(HeadKind(uniform(g, 0, 2)));
        shuffle(c.kinds, g);
        break;
      default:
        c.kinds = {HeadKind::DENSE, HeadKind::STREAMING};
        for (int h = 0; h < nh; ++h) c.kinds.push_back(HeadKind(uniform(g, 0, 1)));
        shuffle(c.kinds, g);
    }
    const bool retrieval = std::count(c.kinds.begin(), c.kinds.end(), HeadKind::RETRIEVAL) > 0;
    if (shape == kStreamingSkip || uniform(g, 0, 3) > 0) {  // a later chunk (q_offset > 0) three times in four
      if (retrieval || uniform(g, 0, 1)) c.q_offset = c.B * uniform(g, 0, (c.T - 1) / c.B);
      else c.q_offset = uniform(g, 0, c.T - 1);
    }
    if (shape == kStreamingSkip) {
      const int64_t S = std::min(c.sink, c.T), room = c.q_offset - c.window + 1 - S;
      if (room < 1) continue;  // no token is older than the first window: redraw
      c.skip = uniform(g, 0, 1) ? room : uniform(g, 1, room);
    }
    if (retrieval) {
      const int nret = int(std::count(c.kinds.begin(), c.kinds.end(), HeadKind::RETRIEVAL));
      const int64_t nqb = c.nqb(), b0 = c.q_offset / c.B;
      c.max_blocks = int((c.T + c.B - 1) / c.B);
      c.counts.assign(size_t(nret * nqb), 0);
      // entries past a list's count are unspecified: a value no tile may come from
      c.indices.assign(size_t(nret * nqb * c.max_blocks), 1 << 28);
      const int64_t keep = uniform(g, 0, 3);  // in quarters: the share of the other blocks in a list
      for (int r = 0; r < nret; ++r)
        for (int64_t m = 0; m < nqb; ++m) {
          const int64_t b = b0 + m;  // absolute query block
          int32_t* out = c.indices.data() + (r * nqb + m) * c.max_blocks;
          int n = 0;
          for (int64_t cb = 0; cb <= b; ++cb)
            if (cb == 0 || cb == b || uniform(g, 0, 3) < keep) out[n++] = int32_t(cb);
          c.counts[size_t(r * nqb + m)] = n;
        }
    }
    return c;
  }
}

// The check ------------------------------------------------------------------------------------------------------

struct Stats {
  int64_t calls = 0, blocks = 0, tiles = 0, checks = 0;
  // fully_visible is conservative on a sink tile that also holds non-sink keys (it asks all of the tile's keys to
  // be in every window); only a cost, and rare
  int64_t sink_tiles_full_but_masked = 0;
  int64_t tiles_without_visible_key = 0;   // see the comment where it is counted
  int failures = 0;
  // Calls with the features the generator is meant to cover (checked, so that a change to it cannot drop one).
  int64_t ragged_T = 0, chunked = 0, chunked_off_block = 0, skipping = 0, retrieval_chunked = 0, sink_past_T = 0,
          window_lt_block = 0, window_gt_block = 0;
  int64_t by_block_size[2] = {0, 0}, by_sink[3] = {0, 0, 0};
};

// Every query block of every KV head of the call:
//  (a) the tiles in [first, end) of unmasked_tiles are fully visible (every row exists, every key visible to every
//      query of the block);
//  (b) every other tile is not, except the streaming sink tiles, which unmasked_tiles leaves masked on purpose;
//      fully_visible(start(n)) is exact on the same tiles and never claims a sink tile that is not fully visible
//      (the mma.sync kernel skips the mask of every tile it accepts);
//  (c) for each query, the visited rows that `visible` accepts hold exactly the reference's visible keys, each
//      once (the tiles neither overlap nor miss a key);
//  (d) `visible` equals the reference for every row of every visited tile (rows past the end included);
//  and the tiles ascend on 64-row boundaries (unmasked_tiles relies on it) and each holds a key some query of the
//  block sees (no wasted tile), but for one case counted in Stats.
void check_call(const Call& c, Stats& st) {
  using Tiles = rtp::kernels::cuda_detail::PrefillTiles<TileArgs>;
  const TileArgs a = tile_args(c);
  const std::vector<int64_t> tok = row_tokens(c);
  const int64_t krows = int64_t(tok.size()), Tq = c.T - c.q_offset;
  EXPECT_EQ(krows, a.krows);
  const bool retrieval = std::count(c.kinds.begin(), c.kinds.end(), HeadKind::RETRIEVAL) > 0;
  st.ragged_T += c.T % c.B != 0;
  st.chunked += c.q_offset > 0;
  st.chunked_off_block += c.q_offset % c.B != 0;
  st.skipping += c.skip > 0;
  st.retrieval_chunked += retrieval && c.q_offset > 0;
  st.sink_past_T += c.sink > c.T;
  st.window_lt_block += c.window < c.B && c.window % kKeyTileRows != 0;
  st.window_gt_block += c.window > c.B && c.window % kKeyTileRows != 0;
  ++st.by_block_size[c.B == 128];
  ++st.by_sink[c.sink == 0 ? 0 : c.sink == 4 ? 1 : 2];
  std::vector<char> selected;
  std::vector<int> reached;  // [query of the block][key position]: how often the visited rows reach the key
  ++st.calls;
  for (int h = 0, slot = 0; h < int(c.kinds.size()); ++h) {
    const HeadKind kind = c.kinds[h];
    for (int b = 0; b < a.nb; ++b) {
      ++st.blocks;
      const int64_t i0 = c.q_offset + int64_t(b) * c.B, i1 = c.q_offset + std::min(Tq, int64_t(b + 1) * c.B);
      const int64_t nq = i1 - i0;
      auto fail = [&](const std::string& what) {
        ++st.failures;
        std::ostringstream s;
        s << c.describe() << " head " << h << " query block " << b << " (queries " << i0 << ".." << i1 - 1 << ")";
        if (kind == HeadKind::RETRIEVAL) {
          s << " list";
          const int32_t* l = c.indices.data() + (slot * c.nqb() + b) * c.max_blocks;
          for (int n = 0; n < c.counts[size_t(slot * c.nqb() + b)]; ++n) s << " " << l[n];
        }
        ADD_FAILURE() << s.str() << ": " << what;
      };
      auto check = [&](bool ok, const auto& what) {
        ++st.checks;
        if (!ok && st.failures < 30) fail(what());
        return ok;
      };
      selected.assign(size_t((c.T + c.B - 1) / c.B), 0);
      if (kind == HeadKind::RETRIEVAL) {
        const int64_t li = slot * c.nqb() + b;
        for (int n = 0; n < c.counts[size_t(li)]; ++n) selected[size_t(c.indices[size_t(li * c.max_blocks + n)])] = 1;
      }

      const Tiles t(a, h, b);
      check(t.q0 == i0 && t.qlast == i1 - 1,
            [&] { return "q0/qlast " + std::to_string(t.q0) + "/" + std::to_string(t.qlast); });
      int first = -1, end = -1;
      t.unmasked_tiles(a, first, end);
      if (!check(0 <= first && first <= end && end <= t.count, [&] {
            return "unmasked_tiles [" + std::to_string(first) + ", " + std::to_string(end) + ") of " +
                   std::to_string(t.count);
          }))
        continue;
      reached.assign(size_t(nq * c.T), 0);
      for (int n = 0; n < t.count; ++n) {
        ++st.tiles;
        const int64_t ks = t.start(n);
        const auto tile = [&] { return "tile " + std::to_string(n) + " (rows " + std::to_string(ks) + "..) "; };
        const bool in_order = ks >= 0 && ks % kKeyTileRows == 0 && (n == 0 || ks > t.start(n - 1));
        if (!check(in_order, [&] { return tile() + "out of order"; })) break;
        bool ref_full = ks + kKeyTileRows <= krows, any = false;
        for (int64_t r = ks; r < ks + kKeyTileRows; ++r)
          for (int64_t i = i0; i < i1; ++i) {
            const bool ref = r < krows && ref_visible(kind, c, selected, i, tok[size_t(r)]);
            const bool vis = t.visible(a, r, i);
            ref_full = ref_full && ref;
            any = any || ref;
            check(vis == ref, [&] {  // (d)
              return tile() + "visible(row " + std::to_string(r) + ", query " + std::to_string(i) + ") = " +
                     std::to_string(vis);
            });
            if (vis && r < krows) ++reached[size_t((i - i0) * c.T + tok[size_t(r)])];
          }
        const bool sink_tile = kind == HeadKind::STREAMING && n < t.sink_tiles;
        const bool fv = t.fully_visible(a, ks);
        if (n >= first && n < end) {
          check(ref_full, [&] { return tile() + "in the unmasked interval but not fully visible"; });  // (a)
        } else if (!sink_tile) {
          check(!ref_full, [&] {  // (b)
            return tile() + "fully visible outside the unmasked interval [" + std::to_string(first) + ", " +
                   std::to_string(end) + ")";
          });
        }
        if (sink_tile) {
          check(!fv || ref_full, [&] { return tile() + "fully_visible on a sink tile that needs a mask"; });
          st.sink_tiles_full_but_masked += ref_full && !fv;
        } else {
          check(fv == ref_full, [&] { return tile() + "fully_visible = " + std::to_string(fv); });
        }
        if (!any) {
          // Expected only where a 128-key retrieval block's second half lies past the last key: the call's last
          // query block holds 64 queries or fewer and the list's diagonal block still counts two tiles (all
          // masked; the kernels load zeros).
          const bool tail_half = kind == HeadKind::RETRIEVAL && c.B == 128 && ks >= krows && ks % 128 == 64;
          check(tail_half, [&] { return tile() + "has no key visible to any query of the block"; });
          st.tiles_without_visible_key += tail_half;
        }
      }
      for (int64_t i = i0; i < i1; ++i)  // (c)
        for (int64_t j = 0; j < c.T; ++j) {
          const int want = ref_visible(kind, c, selected, i, j) ? 1 : 0;
          const int got = reached[size_t((i - i0) * c.T + j)];
          check(got == want, [&] {
            return "query " + std::to_string(i) + " reaches key " + std::to_string(j) + " " + std::to_string(got) +
                   " times, expected " + std::to_string(want);
          });
        }
    }
    slot += kind == HeadKind::RETRIEVAL;
  }
}

TEST(PrefillTiles, MatchReferenceOnRandomCalls) {
  const auto t0 = std::chrono::steady_clock::now();
  std::mt19937 g(20250611);
  Stats st;
  constexpr int kCallsPerShape = 250;
  for (int n = 0; n < kCallsPerShape * kShapes && st.failures < 30; ++n)
    check_call(random_call(g, Shape(n % kShapes)), st);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%lld calls, %lld (KV head, query block) pairs, %lld tiles, %lld checks in %.2f s; sink tiles fully "
              "visible but masked: %lld; retrieval tail tiles without a visible key: %lld\n",
              (long long)st.calls, (long long)st.blocks, (long long)st.tiles, (long long)st.checks, s,
              (long long)st.sink_tiles_full_but_masked, (long long)st.tiles_without_visible_key);
  EXPECT_EQ(st.failures, 0);
  for (int64_t n : {st.ragged_T, st.chunked, st.chunked_off_block, st.skipping, st.retrieval_chunked, st.sink_past_T,
                    st.window_lt_block, st.window_gt_block, st.by_block_size[0], st.by_block_size[1], st.by_sink[0],
                    st.by_sink[1], st.by_sink[2]})
    EXPECT_GT(n, 10);
  std::printf("calls: T %% B != 0 %lld, q_offset > 0 %lld (not a multiple of B %lld, with retrieval heads %lld), "
              "skip > 0 %lld, sink > T %lld, window < B %lld, window > B %lld (windows not multiples of 64)\n",
              (long long)st.ragged_T, (long long)st.chunked, (long long)st.chunked_off_block,
              (long long)st.retrieval_chunked, (long long)st.skipping, (long long)st.sink_past_T,
              (long long)st.window_lt_block, (long long)st.window_gt_block);
}

// Block lists on the GPU are not checked by the ops. A list that breaks the contract (a count outside [0,
// max_blocks], entries negative, past the query block, or anything) must still give tiles inside the call's keys:
// a count within the list's capacity, and tile starts within the blocks the query block may see. (The result of such
// a call is unspecified; a read outside k and v would end the CUDA context.)
TEST(PrefillTiles, ListsThatBreakTheContractStayInsideTheKeys) {
  using Tiles = rtp::kernels::cuda_detail::PrefillTiles<TileArgs>;
  std::mt19937 g(20261205);
  const int32_t kWild[] = {INT32_MIN, -65, -1, INT32_MAX, 1 << 28};
  int64_t tiles = 0, clamped = 0;
  for (int n = 0; n < 400; ++n) {
    Call c = random_call(g, n % 2 ? kAllRetrieval : kMixed);
    for (auto& x : c.counts) {
      const int64_t u = uniform(g, 0, 5);
      x = u == 0 ? INT32_MIN : u == 1 ? -1 : u == 2 ? c.max_blocks + 1 : u == 3 ? INT32_MAX
                                                                          : int32_t(uniform(g, 0, c.max_blocks));
    }
    for (auto& x : c.indices) x = uniform(g, 0, 1) ? kWild[uniform(g, 0, 4)] : int32_t(uniform(g, 0, 2 * c.max_blocks));
    const TileArgs a = tile_args(c);
    const int shift = c.B > kKeyTileRows ? 1 : 0;
    for (int h = 0; h < int(c.kinds.size()); ++h) {
      if (c.kinds[h] != HeadKind::RETRIEVAL) continue;
      for (int b = 0; b < a.nb; ++b) {
        const Tiles t(a, h, b);
        const int64_t last_block = t.qlast / c.B;  // retrieval calls skip no tokens: rows are positions
        ASSERT_GE(t.count, 0) << c.describe() << " query block " << b;
        ASSERT_LE(t.count, c.max_blocks << shift) << c.describe() << " query block " << b;
        int first = -1, end = -1;
        t.unmasked_tiles(a, first, end);
        ASSERT_TRUE(0 <= first && first <= end && end <= t.count) << c.describe();
        for (int k = 0; k < t.count; ++k, ++tiles) {
          const int64_t ks = t.start(k);
          const int32_t raw = c.indices[size_t((int64_t(a.slot[h]) * a.nb + b) * c.max_blocks + (k >> shift))];
          clamped += raw < 0 || raw > last_block;
          ASSERT_GE(ks, 0) << c.describe() << " query block " << b << " tile " << k << " entry " << raw;
          ASSERT_LE(ks / c.B, last_block) << c.describe() << " query block " << b << " tile " << k << " entry " << raw;
          ASSERT_LT(last_block * c.B, a.krows) << c.describe();
        }
      }
    }
  }
  std::printf("%lld tiles of broken lists, %lld from clamped entries\n", (long long)tiles, (long long)clamped);
  EXPECT_GT(clamped, 1000);
}

}  // namespace
