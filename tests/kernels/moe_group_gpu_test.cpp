// The MoE grouping CUDA kernels (rtp/kernels/moe_group.h, through ops::moe_group_slots) against the CPU reference:
// the same permutation, ends and inverse, to the integer, for a decode-sized call, a 4096-token prompt chunk of
// Qwen3-30B-A3B (8 of 128), a 32K-token training batch (262,144 slots, 256 tiles), tails of a tile, skewed routing
// (all slots on one expert: one expert's rows span every tile), 1024 experts (the kernels' limit) and 3000 (the sort
// fallback).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "rtp/ops/moe_grouped.h"

namespace {

TEST(MoeGroupCuda, EqualsTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the grouping kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(9);
  for (const auto& [N, K, E] : std::vector<std::array<int64_t, 3>>{{1, 8, 128}, {4096, 8, 128}, {32768, 8, 128},
                                                                  {1, 1, 1}, {129, 8, 128}, {1000, 3, 60},
                                                                  {777, 4, 1024}, {300, 2, 3000}}) {
    for (const int skew : {0, 1, 2}) {
      // 0: uniform; 1: every slot on one expert; 2: most slots on the last two experts, the rest uniform.
      auto ids = torch::randint(0, E, {N, K}, torch::kInt64);
      if (skew == 1) ids.fill_(E / 2);
      if (skew == 2) ids = torch::where(torch::rand({N, K}) < 0.8, E - 1 - torch::randint(0, std::min<int64_t>(E, 2), {N, K}, torch::kInt64), ids);
      const auto want = rtp::ops::moe_group_slots(ids, E);  // the CPU reference
      const auto got = rtp::ops::moe_group_slots(ids.to(dev), E);
      const std::string at = std::to_string(N) + " x " + std::to_string(K) + ", " + std::to_string(E) +
                             " experts, skew " + std::to_string(skew);
      EXPECT_TRUE(torch::equal(got.row_token.cpu(), want.row_token)) << at;
      EXPECT_TRUE(torch::equal(got.ends.cpu(), want.ends)) << at;
      EXPECT_TRUE(torch::equal(got.slot_row.cpu(), want.slot_row)) << at;
    }
  }
}

}  // namespace
