// ops::sparse_attention (the prefill op) on the CPU: the retrieval heads' block lists are held to the contract of
// sparse_attention_params.h before the CPU reference reads them, one-shot and for a chunk (q_offset > 0); a layer's
// heads of one kind attended in place equal the same heads gathered and scattered.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "query_groups_case.h"
#include "rtp/ops/sparse_attention.h"
#include "test_util.h"

namespace {

using rtp::kernels::HeadKind;
using rtp::ops::BlockLists;
using rtp::ops::SparseConfig;

struct Case {
  int64_t q_offset, Tq, T;
  torch::Tensor q, k, v;
  BlockLists lists;
};

// One retrieval and one streaming KV head, two query heads each, head_dim 16; block size 64. The lists come from
// select_blocks over random index vectors (top_p 1: every block up to the query block).
Case make_case(int64_t q_offset, int64_t Tq, const SparseConfig& c) {
  torch::manual_seed(31);
  Case x{q_offset, Tq, q_offset + Tq, {}, {}, {}, {}};
  x.q = torch::randn({4, Tq, 16});
  x.k = torch::randn({2, x.T, 16});
  x.v = torch::randn({2, x.T, 16});
  x.lists = rtp::ops::select_blocks(torch::randn({1, 2, Tq, 16}), torch::randn({1, x.T, 16}), c, 0, q_offset);
  return x;
}

const std::vector<HeadKind> kKinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING};

SparseConfig config() {
  SparseConfig c;
  c.sink = 4;
  c.window = 32;
  c.block_size = 64;
  c.top_p = 1.f;
  return c;
}

std::string attend_error(const Case& x, const BlockLists& lists) {
  return rtp::testing::error_of(
      [&] { rtp::ops::sparse_attention(x.q, x.k, x.v, kKinds, lists, config(), x.q_offset); });
}

BlockLists copy(const BlockLists& l) { return {l.counts.clone(), l.indices.clone()}; }

// The CPU reference marks listed blocks in a table of the call's key blocks and reads counts[r, m] entries of each
// list: a count past max_blocks, or an entry past the last block or below 0, was read or written past the end
// (a negative entry wrote before the table). Entries after the query block, out of order or repeated break the
// contract the CUDA kernels rely on (a repeated block would be attended twice there). All are refused, naming the list.
TEST(SparseAttentionOp, RefusesBlockListsOutsideTheContract) {
  const auto x = make_case(0, 200, config());  // query blocks 0..3
  const int64_t max_blocks = x.lists.indices.size(2);
  ASSERT_EQ(max_blocks, 4);
  ASSERT_EQ(x.lists.counts[0][3].item<int>(), 4);  // top_p 1 lists every block
  EXPECT_EQ(attend_error(x, x.lists), "<no error: the call succeeded>");

  auto more = copy(x.lists);
  more.counts[0][0] = int32_t(max_blocks + 1);  // reads past list (0, 0)
  EXPECT_NE(attend_error(x, more).find("sparse_attention: counts[0, 0] must be in [0, max_blocks = 4], found 5"),
            std::string::npos)
      << attend_error(x, more);
  auto negative_count = copy(x.lists);
  negative_count.counts[0][2] = -1;
  EXPECT_NE(attend_error(x, negative_count).find("counts[0, 2] must be in [0, max_blocks = 4], found -1"),
            std::string::npos)
      << attend_error(x, negative_count);

  auto past_last = copy(x.lists);
  past_last.indices[0][3][3] = 4;  // block 4 of 4: one past the table
  EXPECT_NE(attend_error(x, past_last)
                .find("sparse_attention: indices[0, 3] (query block 3) must list ascending, unique key blocks in "
                      "[0, 3], found 4 at entry 3 after 2"),
            std::string::npos)
      << attend_error(x, past_last);
  auto after_query = copy(x.lists);
  after_query.counts[0][1] = 3, after_query.indices[0][1][2] = 2;  // block 2 for query block 1
  EXPECT_NE(attend_error(x, after_query).find("indices[0, 1] (query block 1) must list ascending, unique key blocks in "
                                              "[0, 1], found 2 at entry 2"),
            std::string::npos)
      << attend_error(x, after_query);
  auto repeated = copy(x.lists);
  repeated.indices[0][2][1] = 0;  // 0, 0, 2
  EXPECT_NE(attend_error(x, repeated).find("found 0 at entry 1 after 0"), std::string::npos) << attend_error(x, repeated);
  auto descending = copy(x.lists);
  descending.indices[0][3][1] = 3, descending.indices[0][3][3] = 1;  // 0, 3, 2, 1
  EXPECT_NE(attend_error(x, descending).find("found 2 at entry 2 after 3"), std::string::npos)
      << attend_error(x, descending);
  auto below = copy(x.lists);
  below.indices[0][1][0] = -1;  // written before the table
  EXPECT_NE(attend_error(x, below).find("in [0, 1], found -1 at entry 0"), std::string::npos) << attend_error(x, below);

  // Entries past a list's count are unspecified: anything there is fine.
  auto tail = copy(x.lists);
  tail.counts[0][0] = 1, tail.indices[0][0][1] = -7, tail.indices[0][0][3] = 99;
  EXPECT_EQ(attend_error(x, tail), "<no error: the call succeeded>");
}

// A chunk's lists belong to absolute query blocks q_offset / block_size + m: list m of the chunk starting at
// block 2 may hold blocks up to 2 + m, not up to m (nor up to the last block).
TEST(SparseAttentionOp, ChunkListsAreBoundedByTheirAbsoluteQueryBlock) {
  const auto x = make_case(128, 72, config());  // query blocks 2 and 3
  ASSERT_EQ(x.lists.counts.size(1), 2);
  ASSERT_EQ(x.lists.counts[0][0].item<int>(), 3);  // blocks 0, 1, 2
  EXPECT_EQ(attend_error(x, x.lists), "<no error: the call succeeded>");
  auto ahead = copy(x.lists);
  ahead.indices[0][0][2] = 3;  // block 3 for query block 2
  EXPECT_NE(attend_error(x, ahead).find("sparse_attention: indices[0, 0] (query block 2) must list ascending, unique key "
                                        "blocks in [0, 2], found 3 at entry 2 after 1"),
            std::string::npos)
      << attend_error(x, ahead);
}

// Both ops divided by block_size for the lists' shapes before any check of it: 0 was a division by zero (the
// process died of SIGFPE). Refused first, naming the op.
TEST(SparseAttentionOp, RefusesABlockSizeOtherThan64Or128BeforeDividingByIt) {
  const auto x = make_case(0, 200, config());
  for (const int bs : {0, 32}) {
    auto c = config();
    c.block_size = bs;
    const auto attend = rtp::testing::error_of(
        [&] { rtp::ops::sparse_attention(x.q, x.k, x.v, kKinds, x.lists, c, x.q_offset); });
    EXPECT_NE(attend.find("sparse_attention: block_size must be 64 or 128, found " + std::to_string(bs)),
              std::string::npos)
        << attend;
    const auto select = rtp::testing::error_of(
        [&] { rtp::ops::select_blocks(torch::randn({1, 2, 200, 16}), torch::randn({1, 200, 16}), c); });
    EXPECT_NE(select.find("select_blocks: block_size must be 64 or 128, found " + std::to_string(bs)), std::string::npos)
        << select;
  }
}

// In place (QueryGroupsInto) the reference reads query head group * G + i where it read head h: the same numbers as
// the gathered call's, so equal to the last bit; heads of the groups a call does not name keep what out held.
TEST(SparseAttentionOp, HeadsOfOneKindAttendInPlaceAsIfGathered) {
  const auto x = rtp::testing::run_query_groups_case(torch::TensorOptions().dtype(torch::kFloat32), 16);
  EXPECT_TRUE(torch::equal(x.in_place, x.gathered)) << (x.in_place - x.gathered).abs().max().item<float>();
  for (int64_t h : {0, 1, 2, 6, 7, 8}) EXPECT_TRUE(x.after_retrieval[h].eq(x.untouched).all().item<bool>()) << h;
  for (int64_t h : {3, 4, 5, 9, 10, 11}) EXPECT_TRUE(torch::equal(x.after_retrieval[h], x.gathered[h])) << h;
  // A bf16 out on the CPU (where the reference computes in float32) goes through a float32 copy.
  const auto bf = rtp::testing::run_query_groups_case(torch::TensorOptions().dtype(torch::kBFloat16), 16);
  EXPECT_TRUE(torch::equal(bf.in_place, bf.gathered));
}

TEST(SparseAttentionOp, RefusesQueryGroupsThatDoNotFitQ) {
  const auto x = make_case(0, 200, config());
  auto out = torch::zeros({4, 200, 16});
  auto error = [&](std::vector<int32_t> groups, int64_t G, torch::Tensor o) {
    rtp::ops::QueryGroupsInto into{std::move(groups), G, o};
    return rtp::testing::error_of(
        [&] { rtp::ops::sparse_attention(x.q, x.k, x.v, kKinds, x.lists, config(), 0, 0, &into); });
  };
  EXPECT_EQ(error({0, 1}, 2, out), "<no error: the call succeeded>");
  EXPECT_EQ(error({1, 0}, 2, out), "<no error: the call succeeded>");
  EXPECT_NE(error({0}, 2, out).find("sparse_attention: expected one query group per KV head (2), found 1"),
            std::string::npos);
  EXPECT_NE(error({0, 2}, 2, out).find("sparse_attention: query group 2 is not in [0, 2) (q has 4 heads in groups of 2)"),
            std::string::npos);
  EXPECT_NE(error({0, 1}, 3, out).find("sparse_attention: group_size 3 does not divide the 4 query heads of q"),
            std::string::npos);
  const auto dup = error({1, 1}, 2, out);
  EXPECT_NE(dup.find("q_group entries must be distinct"), std::string::npos) << dup;
  const auto shape = error({0, 1}, 2, torch::zeros({4, 199, 16}));
  EXPECT_NE(shape.find("sparse_attention: out must be [4, 200, 16]"), std::string::npos) << shape;
}

}  // namespace
