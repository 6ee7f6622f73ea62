// The CUDA decode's split rules (kernels/src/decode_splits.h) on the CPU: a grid sized by the bounds must hold every
// length up to its bound (else a call that reads its length on the device would skip keys), the splits must cover
// each head's keys exactly once with no empty block, and the index passes' rule must be the one the kernels had when
// the length came from the host (written out here independently).
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "decode_splits.h"

using rtp::kernels::HeadKind;
using namespace rtp::kernels::cuda_detail;

namespace {

std::vector<SplitTuning> tunings() {
  std::vector<SplitTuning> ts(4);
  ts[1].dense_keys_per_block = 200, ts[1].retrieval_candidates_per_block = 512, ts[1].streaming_keys_per_block = 300;
  ts[2].index_tokens_per_block = 1024, ts[2].hist_tokens_per_block = 768;
  ts[3].v2_attend = true;
  return ts;
}

}  // namespace

TEST(DecodeSplits, BoundsHoldEveryShorterLength) {
  const int64_t sink = 4, window = 8192;
  for (const auto& t : tunings())
    for (const int64_t Lmax : {1, 63, 256, 257, 2048, 2049, 4096, 4097, 9000, 16384, 16385, 30720, 30721, 32768, 32769, 40000, 49152, 49153, 98304, 98305, 131072, 131073, 140000, 262144, 262145, 300001}) {
      for (const HeadKind k : {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL}) {
        int worst = 0;
        for (int64_t L = 1; L <= Lmax; ++L) worst = std::max(worst, head_split(k, L, sink, window, t).nsplit);
        // The bound holds every length, and no grid is much larger than needed.
        const int bound = max_head_splits(k, Lmax, sink, window, t);
        EXPECT_GE(bound, worst) << "kind " << int(k) << " Lmax " << Lmax;
        EXPECT_LE(bound, worst + 1) << "kind " << int(k) << " Lmax " << Lmax;
      }
      const IndexSplit b = max_index_split(Lmax, t);
      int worst_stats = 0, worst_hist = 0;
      for (int64_t L = 1; L <= Lmax; ++L) {
        const IndexSplit s = index_split(L, t);
        worst_stats = std::max(worst_stats, s.nstats), worst_hist = std::max(worst_hist, s.nhist);
      }
      EXPECT_GE(b.nstats, worst_stats) << "Lmax " << Lmax;
      EXPECT_GE(b.nhist, worst_hist) << "Lmax " << Lmax;
      // At most a few percent more blocks than the worst length needs (the default rule's bound is ceil(L / 512)).
      EXPECT_LE(b.nstats, worst_stats + worst_stats / 16 + 1) << "Lmax " << Lmax;
    }
}

TEST(DecodeSplits, SplitsCoverTheKeysOnceWithoutEmptyBlocks) {
  for (const auto& t : tunings())
    for (const HeadKind k : {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL})
      for (const int64_t window : {1, 100, 8192})
        for (int64_t L = 1; L <= 70000; L += (L < 300 ? 1 : 97)) {
          const HeadSplit h = head_split(k, L, 4, window, t);
          const int64_t expect_keys = k == HeadKind::STREAMING ? std::min<int64_t>(L, 4) + std::min<int64_t>(window, std::max<int64_t>(0, L - 4)) : L;
          ASSERT_EQ(h.nkeys, expect_keys);
          ASSERT_GE(int64_t(h.nsplit) * h.chunk, h.nkeys) << "kind " << int(k) << " L " << L;
          ASSERT_LT(int64_t(h.nsplit - 1) * h.chunk, h.nkeys) << "kind " << int(k) << " L " << L;
          if (k == HeadKind::RETRIEVAL && !t.v2_attend) ASSERT_LE(h.chunk, kRetrievalChunkMax);
        }
}

TEST(DecodeSplits, IndexPassesKeepTheHostRule) {
  SplitTuning t;
  for (int64_t L = 1; L <= 3000000; L += (L < 5000 ? 1 : 4099)) {
    // 256 tokens per block up to 48K keys, then at least 512 and at most 512 blocks.
    const int64_t chunk = L <= 49152 ? 256 : std::max<int64_t>(512, ((L + 511) / 512 + 255) / 256 * 256);
    const IndexSplit s = index_split(L, t);
    ASSERT_EQ(s.stat_chunk, chunk) << L;
    ASSERT_EQ(s.nstats, (L + chunk - 1) / chunk) << L;
    ASSERT_EQ(s.hist_chunk, chunk) << L;
    ASSERT_LE(s.nstats, 512) << L;
  }
  // Dense heads: 64 keys per block per 2K keys, at most 1024.
  for (const auto& [L, chunk] : std::vector<std::pair<int64_t, int>>{
           {1, 64}, {2048, 64}, {2049, 128}, {4096, 128}, {4097, 192}, {8192, 256}, {16384, 512}, {30720, 960},
           {30721, 1024}, {32768, 1024}, {1000000, 1024}})
    EXPECT_EQ(head_split(HeadKind::DENSE, L, 4, 8192, t).chunk, chunk) << L;
  // Retrieval heads: 256 candidates per block up to 48K keys, 512 up to 128K, 1024 up to 256K, then 2048.
  for (const auto& [L, chunk] : std::vector<std::pair<int64_t, int>>{{1, 256},
                                                                     {4096, 256},
                                                                     {49152, 256},
                                                                     {49153, 512},
                                                                     {131072, 512},
                                                                     {131073, 1024},
                                                                     {262144, 1024},
                                                                     {262145, 2048}})
    EXPECT_EQ(head_split(HeadKind::RETRIEVAL, L, 4, 8192, t).chunk, chunk) << L;
}
