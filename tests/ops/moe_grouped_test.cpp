// ops::moe_grouped on the CPU against the block's definition in float64, through both of its GEMM paths (one grouped
// GEMM where rows are 16-byte multiples, a GEMM pair per expert otherwise), with experts that get no token; bf16 within
// twice the error of the expert loop it replaced; shape errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "moe_grouped_case.h"
#include "rtp/ops/moe_decode.h"
#include "rtp/ops/moe_grouped.h"
#include "test_util.h"

namespace {

using rtp::testing::make_moe_case;

TEST(MoeGrouped, EqualsTheDefinitionOnBothGemmPaths) {
  // N, K, E, H, I: aligned rows (the grouped GEMM), odd rows (per expert), one slot, more experts than slots.
  for (const auto& [N, K, E, H, I] : std::vector<std::array<int64_t, 5>>{
           {37, 4, 9, 64, 48}, {13, 2, 5, 37, 19}, {20, 1, 3, 16, 8}, {3, 2, 16, 32, 24}}) {
    const auto c = make_moe_case(N, K, E, H, I, 11);
    const auto x = c.x;
    EXPECT_EQ(rtp::ops::moe_grouped_gemm_supported(x, c.gate_up, c.down), H % 4 == 0 && I % 4 == 0);
    const auto got = rtp::ops::moe_grouped(x, c.expert, c.weight, c.gate_up, c.down);
    ASSERT_EQ(got.sizes(), x.sizes());
    ASSERT_EQ(got.scalar_type(), torch::kFloat32);
    const auto ref = rtp::testing::moe_by_definition(c);
    const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err, 2e-6 * (1 + ref.abs().max().item<double>())) << N << "x" << K << " of " << E << ", H " << H << ", I " << I;
  }
}

// Training through the block (a pretraining stage): the gradients of x, the routing weights and both expert weights
// equal those of the definition in float64, on both GEMM paths.
TEST(MoeGrouped, GradientsEqualTheDefinitionsOnBothGemmPaths) {
  for (const auto& [N, K, E, H, I] : std::vector<std::array<int64_t, 5>>{{37, 4, 9, 64, 48}, {13, 2, 5, 37, 19}}) {
    const auto c = make_moe_case(N, K, E, H, I, 15);
    const auto probe = torch::randn({N, H});
    const auto got = rtp::testing::moe_gradients(c, probe, torch::kFloat32, rtp::ops::moe_grouped);
    const auto ref = rtp::testing::moe_gradients(c, probe, torch::kFloat64, rtp::testing::moe_definition_differentiable);
    const char* names[] = {"x", "weight", "gate_up", "down"};
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_TRUE(got[i].defined()) << names[i] << ": no gradient reached it";
      const double err = (got[i].to(torch::kFloat64) - ref[i]).abs().max().item<double>();
      EXPECT_LE(err, 1e-5 * (1 + ref[i].abs().max().item<double>())) << names[i] << ", H " << H << ", I " << I;
    }
  }
}

// The decode block's kernels have no backward either: with gradients wanted it hands over to moe_grouped, so a few
// tokens trained through the block get the definition's gradients too.
TEST(MoeGrouped, DecodeBlockGradientsEqualTheDefinitions) {
  const auto c = make_moe_case(5, 4, 9, 64, 48, 16);
  const auto probe = torch::randn({5, 64});
  const auto decode = [](const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                         const torch::Tensor& gate_up, const torch::Tensor& down) {
    return rtp::ops::moe_decode(x, expert, weight, gate_up, down);
  };
  const auto got = rtp::testing::moe_gradients(c, probe, torch::kFloat32, decode);
  const auto ref = rtp::testing::moe_gradients(c, probe, torch::kFloat64, rtp::testing::moe_definition_differentiable);
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(got[i].defined()) << "input " << i << ": no gradient reached it";
    EXPECT_LE((got[i].to(torch::kFloat64) - ref[i]).abs().max().item<double>(),
              1e-5 * (1 + ref[i].abs().max().item<double>()))
        << "input " << i;
  }
}

// Each expert's output rounded to bf16, then weighted and a token's slots summed once in float32: no worse than twice the replaced loop's bf16 error.
TEST(MoeGrouped, Bf16WithinTwiceTheExpertLoop) {
  const auto c = make_moe_case(64, 4, 8, 64, 48, 12);
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16);
  const auto got = rtp::ops::moe_grouped(c.x.to(bf), c.expert, c.weight.to(bf), c.gate_up.to(bf), c.down.to(bf));
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  const auto ref = rtp::testing::moe_by_definition(c);
  const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
  const double naive = (rtp::testing::moe_expert_loop(c, bf).to(torch::kFloat64) - ref).abs().max().item<double>();
  EXPECT_GT(naive, 0.0);
  EXPECT_LE(err, 2 * naive) << "grouped " << err << ", expert loop " << naive;
}

TEST(MoeGrouped, RefusesShapesThatDoNotFit) {
  const auto c = make_moe_case(4, 2, 3, 16, 8, 13);
  auto error = [&](const torch::Tensor& x, const torch::Tensor& e, const torch::Tensor& w, const torch::Tensor& gu,
                   const torch::Tensor& d) { return rtp::testing::error_of([&] { rtp::ops::moe_grouped(x, e, w, gu, d); }); };
  EXPECT_EQ(error(c.x, c.expert, c.weight, c.gate_up, c.down), "<no error: the call succeeded>");
  EXPECT_NE(error(c.x, c.expert, c.weight.narrow(1, 0, 1), c.gate_up, c.down)
                .find("moe_grouped: expected x [N, H], expert and weight [N, K], found x [4, 16], expert [4, 2], weight [4, 1]"),
            std::string::npos);
  EXPECT_NE(error(c.x, c.expert, c.weight, c.gate_up, c.down.narrow(2, 0, 7))
                .find("moe_grouped: expected gate_up [E, 2I, H] and down [E, H, I] with H = 16, found [3, 16, 16] and [3, 16, 7]"),
            std::string::npos);
  EXPECT_NE(error(c.x, c.expert.to(torch::kInt32), c.weight, c.gate_up, c.down)
                .find("moe_grouped: expert ids must be int64, found Int"),
            std::string::npos);
}

// moe_combine (the block's last step) on the CPU: eager ops, against the formula in float64; shape errors.
TEST(MoeGrouped, CombineEqualsTheFormula) {
  torch::manual_seed(14);
  const int64_t N = 9, K = 3, H = 24;
  const auto rows = torch::randn({N * K, H});
  const auto slot_row = torch::randperm(N * K, torch::kInt64);
  const auto weight = torch::rand({N * K});
  const auto got = rtp::ops::moe_combine(rows, slot_row, weight, K);
  const auto ref = (rows.to(torch::kFloat64).index_select(0, slot_row).view({N, K, H}) *
                    weight.to(torch::kFloat64).view({N, K, 1}))
                       .sum(1);
  EXPECT_LE((got.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5);
  const auto bad = rtp::testing::error_of([&] { rtp::ops::moe_combine(rows, slot_row, weight, 4); });
  EXPECT_NE(bad.find("moe_combine: expected rows [N K, H], slot_row and weight [N K] with K = 4, found rows [27, 24]"),
            std::string::npos)
      << bad;
}

}  // namespace
