// The MoE combine CPU reference (rtp/kernels/moe_combine.h) against the same step written with torch ops in float64
// (rows gathered by slot, weighted, summed over each token's slots), on odd sizes with a row stride past the hidden
// size; parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "rtp/kernels/moe_combine.h"

namespace {

using rtp::kernels::MoeCombineParams;

TEST(MoeCombineRef, MatchesTorchOnOddSizes) {
  torch::manual_seed(5);
  for (const auto& [N, K, H, stride] : std::vector<std::array<int64_t, 4>>{{1, 1, 1, 1}, {7, 3, 37, 40}, {20, 8, 64, 64}}) {
    const auto rows = torch::randn({N * K, stride});
    const auto slot_row = torch::randperm(N * K, torch::kInt64);
    const auto weight = torch::rand({N * K});
    auto out = torch::full({N, H}, 9.f);
    MoeCombineParams p;
    p.rows = rows.data_ptr();
    p.slot_row = slot_row.data_ptr<int64_t>();
    p.weight = weight.data_ptr<float>();
    p.out = out.data_ptr();
    p.tokens = N, p.slots_per_token = K, p.hidden = H, p.row_stride = stride;
    ASSERT_STREQ(rtp::kernels::check_moe_combine_params(p, false), "");
    rtp::kernels::moe_combine_cpu(p);
    const auto ref = (rows.narrow(1, 0, H).to(torch::kFloat64).index_select(0, slot_row).view({N, K, H}) *
                      weight.to(torch::kFloat64).view({N, K, 1}))
                         .sum(1);
    EXPECT_LE((out.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-6) << N << " x " << K << " x " << H;
  }
}

TEST(MoeCombineRef, RefusesBadParameters) {
  float buf[64] = {};
  int64_t idx[4] = {};
  MoeCombineParams p;
  p.rows = buf, p.slot_row = idx, p.weight = buf, p.out = buf;
  p.tokens = 2, p.slots_per_token = 2, p.hidden = 8, p.row_stride = 8;
  EXPECT_STREQ(rtp::kernels::check_moe_combine_params(p, false), "");
  auto q = p;
  q.row_stride = 7;
  EXPECT_STREQ(rtp::kernels::check_moe_combine_params(q, false), "moe_combine: row_stride must be at least hidden");
  q = p, q.slot_row = nullptr;
  EXPECT_STREQ(rtp::kernels::check_moe_combine_params(q, false), "moe_combine: a pointer is null");
  q = p, q.dtype = rtp::kernels::DType::BF16;
  EXPECT_STREQ(rtp::kernels::check_moe_combine_params(q, false), "moe_combine: the CPU reference takes float32 only");
  q = p, q.hidden = 6, q.row_stride = 6;  // 24 bytes: not whole 16-byte vectors
  EXPECT_FALSE(rtp::kernels::moe_combine_cuda_takes(q));
  EXPECT_NE(std::string(rtp::kernels::check_moe_combine_params(q, true)).find("16-byte"), std::string::npos);
}

}  // namespace
