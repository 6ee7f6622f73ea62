// ops::sparse_attention with CUDA q/k/v and block lists still on the host: the lists are held to the contract of
// sparse_attention_params.h before they are copied to the device (the CUDA prefill kernels read counts[r, m]
// entries of each list and load the key rows of each entry: a negative entry read before k and v, a count past
// max_blocks read past the list, an entry out of order made the kernels take masked tiles as fully visible); lists
// already on the device are clamped by the kernels instead. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "query_groups_case.h"
#include "rtp/ops/sparse_attention.h"
#include "test_util.h"

namespace {

using rtp::kernels::HeadKind;
using rtp::ops::BlockLists;

bool have_gpu() { return rtp::kernels::built_with_cuda() && torch::cuda::is_available(); }

TEST(SparseAttentionOpGpu, RefusesHostBlockListsOutsideTheContract) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(41);
  rtp::ops::SparseConfig c;
  c.sink = 4, c.window = 32, c.block_size = 64, c.top_p = 1.f;
  const int64_t T = 200, D = 64;
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto q = torch::randn({4, T, D}, bf), k = torch::randn({2, T, D}, bf), v = torch::randn({2, T, D}, bf);
  const std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING};
  const BlockLists lists = rtp::ops::select_blocks(torch::randn({1, 2, T, 16}), torch::randn({1, T, 16}), c);
  ASSERT_TRUE(lists.counts.is_cpu());
  ASSERT_EQ(lists.indices.size(2), 4);
  const auto error = [&](const BlockLists& l) {
    return rtp::testing::error_of([&] { rtp::ops::sparse_attention(q, k, v, kinds, l, c); });
  };
  EXPECT_EQ(error(lists), "<no error: the call succeeded>");
  // The same lists on the device are not checked (no copy back): the valid ones still run.
  EXPECT_EQ(error({lists.counts.cuda(), lists.indices.cuda()}), "<no error: the call succeeded>");
  const auto copy = [&] { return BlockLists{lists.counts.clone(), lists.indices.clone()}; };
  auto more = copy();
  more.counts[0][3] = 5;
  EXPECT_NE(error(more).find("sparse_attention: counts[0, 3] must be in [0, max_blocks = 4], found 5"),
            std::string::npos)
      << error(more);
  auto negative = copy();
  negative.indices[0][2][0] = -3;
  EXPECT_NE(error(negative).find("sparse_attention: indices[0, 2] (query block 2) must list ascending, unique key "
                                 "blocks in [0, 2], found -3 at entry 0"),
            std::string::npos)
      << error(negative);
  auto descending = copy();
  descending.indices[0][3][0] = 3, descending.indices[0][3][3] = 0;  // 3, 1, 2, 0
  EXPECT_NE(error(descending).find("found 1 at entry 1 after 3"), std::string::npos) << error(descending);
}

// Lists already on the GPU are not checked (no copy back per call); the kernels clamp counts into [0, max_blocks] and
// entries into [0, the list's query block] (prefill_tiles.h). Broken device lists must neither fault (a fault ends the
// CUDA context: the next call would fail too) nor read outside k and v: the result equals that of the same lists
// clamped on the host first, and a valid call afterwards still equals its result from before.
TEST(SparseAttentionOpGpu, BrokenDeviceBlockListsAreClampedNotRead) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(42);
  for (const int B : {64, 128}) {
    rtp::ops::SparseConfig c;
    c.sink = 4, c.window = 32, c.block_size = B, c.top_p = 0.5f;
    const int64_t T = 7 * B + 13, D = 128;
    const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
    const auto q = torch::randn({4, T, D}, bf), k = torch::randn({2, T, D}, bf), v = torch::randn({2, T, D}, bf);
    const std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL};
    const BlockLists lists = rtp::ops::select_blocks(torch::randn({1, 2, T, 16}), torch::randn({1, T, 16}), c);
    const auto valid = rtp::ops::sparse_attention(q, k, v, kinds, {lists.counts.cuda(), lists.indices.cuda()}, c);
    const int64_t nqb = lists.counts.size(1), max_blocks = lists.indices.size(2);
    auto counts = lists.counts.clone().to(torch::kInt32), indices = lists.indices.clone().to(torch::kInt32);
    const std::vector<int32_t> wild = {INT32_MIN, -1, int32_t(nqb), 1 << 28, INT32_MAX};
    for (int64_t m = 0; m < nqb; ++m) {
      counts[0][m] = m % 3 == 0 ? int32_t(max_blocks + 5) : m % 3 == 1 ? -7 : counts[0][m].item<int32_t>();
      for (int64_t i = 0; i < max_blocks; ++i) indices[0][m][i] = wild[size_t((m + i) % wild.size())];
    }
    // The same lists clamped on the host: what the kernels must see.
    auto c_counts = counts.clamp(0, max_blocks), c_indices = indices.clone();
    for (int64_t m = 0; m < nqb; ++m) c_indices[0][m].clamp_(0, m);
    const auto broken = rtp::ops::sparse_attention(q, k, v, kinds, {counts.cuda(), indices.cuda()}, c);
    const auto clamped = rtp::ops::sparse_attention(q, k, v, kinds, {c_counts.cuda(), c_indices.cuda()}, c);
    torch::cuda::synchronize();
    // Bit for bit; NaN where both are NaN (a list clamped to no block leaves its queries no key: 0 / 0).
    const auto same = (broken == clamped) | (broken.isnan() & clamped.isnan());
    EXPECT_TRUE(same.all().item<bool>()) << "block size " << B;
    const auto again = rtp::ops::sparse_attention(q, k, v, kinds, {lists.counts.cuda(), lists.indices.cuda()}, c);
    torch::cuda::synchronize();
    EXPECT_TRUE(torch::equal(again, valid)) << "block size " << B;
  }
}

// In place (QueryGroupsInto) the kernels load query rows of head group * G + i and store output rows there: the same
// arithmetic on the same bf16 inputs as the gathered call, so equal to the last bit, for both kernels and both head
// sizes; q and out are strided views ([Tq, Hq, D] memory) as in the model.
TEST(SparseAttentionOpGpu, HeadsOfOneKindAttendInPlaceAsIfGathered) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  using rtp::kernels::PrefillKernel;
  for (const auto kernel : {PrefillKernel::MMA_SYNC, PrefillKernel::AUTO})
  for (const int64_t D : {64, 128}) {
    const auto x = rtp::testing::run_query_groups_case(bf, D, kernel);
    EXPECT_TRUE(torch::equal(x.in_place, x.gathered))
        << "kernel " << int(kernel) << ", D " << D << ": " << (x.in_place.to(torch::kFloat32) - x.gathered.to(torch::kFloat32)).abs().max().item<float>();
    for (int64_t h : {0, 1, 2, 6, 7, 8}) EXPECT_TRUE(x.after_retrieval[h].eq(x.untouched).all().item<bool>()) << h;
    for (int64_t h : {3, 4, 5, 9, 10, 11}) EXPECT_TRUE(torch::equal(x.after_retrieval[h], x.gathered[h])) << h;
  }
}

}  // namespace
