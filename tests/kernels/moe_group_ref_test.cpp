// The MoE grouping CPU reference (rtp/kernels/moe_group.h) against torch's stable sort of the ids (the permutation,
// the expert ends by searchsorted, the inverse permutation by index_copy: the ops moe_grouped used before the
// kernels), on unbalanced and empty experts, one slot, odd sizes; ids out of range and bad parameters are errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "rtp/kernels/moe_group.h"
#include "rtp/ops/moe_grouped.h"

namespace {

using rtp::kernels::MoeGroupParams;

struct Grouped {
  torch::Tensor row_token, ends, slot_row;
};

Grouped by_torch_sort(const torch::Tensor& ids, int64_t E) {
  const auto [sorted, order] = torch::sort(ids.reshape(-1), /*stable=*/true, 0, /*descending=*/false);
  return {torch::div(order, ids.size(1), "floor"),
          torch::searchsorted(sorted, torch::arange(E, sorted.options()), /*out_int32=*/true, /*right=*/true),
          torch::empty_like(order).index_copy_(0, order, torch::arange(ids.numel(), order.options()))};
}

TEST(MoeGroupRef, EqualsAStableSortOfTheIds) {
  torch::manual_seed(8);
  for (const auto& [N, K, E] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {1, 8, 128}, {37, 3, 5}, {1000, 8, 128},
                                                                  {333, 4, 1024}, {64, 2, 3000}}) {
    for (const bool skewed : {false, true}) {
      // Skewed: most slots on a few experts and many experts empty (a router early in training).
      auto ids = skewed ? torch::randint(0, std::min<int64_t>(E, 3), {N, K}, torch::kInt64)
                        : torch::randint(0, E, {N, K}, torch::kInt64);
      if (skewed && E > 3) ids.index_put_({0, 0}, E - 1);
      const auto want = by_torch_sort(ids, E);
      auto row_token = torch::full({N * K}, -7, torch::kInt64), slot_row = torch::full({N * K}, -7, torch::kInt64);
      auto ends = torch::full({E}, -7, torch::kInt32);
      MoeGroupParams p;
      p.expert = ids.data_ptr<int64_t>();
      p.slots = N * K, p.slots_per_token = K, p.experts = E;
      p.row_token = row_token.data_ptr<int64_t>(), p.slot_row = slot_row.data_ptr<int64_t>();
      p.ends = ends.data_ptr<int32_t>();
      ASSERT_STREQ(rtp::kernels::moe_group_cpu(p), "");
      const std::string at = std::to_string(N) + " x " + std::to_string(K) + ", " + std::to_string(E) + " experts";
      EXPECT_TRUE(torch::equal(row_token, want.row_token)) << at;
      EXPECT_TRUE(torch::equal(ends, want.ends)) << at;
      EXPECT_TRUE(torch::equal(slot_row, want.slot_row)) << at;
      // The op (the reference on the CPU) gives the same.
      const auto g = rtp::ops::moe_group_slots(ids, E);
      EXPECT_TRUE(torch::equal(g.row_token, want.row_token) && torch::equal(g.ends, want.ends) &&
                  torch::equal(g.slot_row, want.slot_row)) << at;
    }
  }
}

TEST(MoeGroupRef, BadIdsAndParametersAreErrors) {
  auto ids = torch::tensor({0, 3, 1, 4}, torch::kInt64).view({2, 2});
  auto row_token = torch::empty({4}, torch::kInt64), slot_row = torch::empty({4}, torch::kInt64);
  auto ends = torch::empty({4}, torch::kInt32);
  MoeGroupParams p;
  p.expert = ids.data_ptr<int64_t>();
  p.slots = 4, p.slots_per_token = 2, p.experts = 4;
  p.row_token = row_token.data_ptr<int64_t>(), p.slot_row = slot_row.data_ptr<int64_t>();
  p.ends = ends.data_ptr<int32_t>();
  EXPECT_STREQ(rtp::kernels::moe_group_cpu(p), "moe group: an expert id is outside [0, experts)");
  try {
    rtp::ops::moe_group_slots(ids, 4);
    ADD_FAILURE() << "an id of 4 among 4 experts was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("outside [0, experts) (4 experts, ids [2, 2])"), std::string::npos) << e.what();
  }
  p.experts = 5;
  p.slots = 3;
  EXPECT_STREQ(rtp::kernels::check_moe_group_params(p, false), "moe group: slots must be a multiple of slots_per_token");
  p.slots = 4;
  EXPECT_STREQ(rtp::kernels::check_moe_group_params(p, true),
               "moe group: the CUDA kernels need the workspace (moe_group_workspace_bytes)");
  p.experts = 2000;
  EXPECT_STREQ(rtp::kernels::check_moe_group_params(p, true), "moe group: the CUDA kernels take at most 1024 experts");
  p.row_token = nullptr;
  EXPECT_STREQ(rtp::kernels::check_moe_group_params(p, false), "moe group: a tensor pointer is null");
}

}  // namespace
