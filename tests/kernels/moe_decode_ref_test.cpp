// The MoE decode CPU reference (rtp/kernels/moe_decode.h) against the same block written with torch ops in double
// (per token and slot: silu(gate x) * (up x), down-projected, weighted, summed), on odd sizes; the model's MoE layer
// through the reference equals its grouped eager path; parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "rtp/kernels/moe_decode.h"
#include "rtp/ops/moe_decode.h"
#include "test_util.h"

namespace {

torch::Tensor torch_moe(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                        const torch::Tensor& gate_up, const torch::Tensor& down) {
  const int64_t N = x.size(0), K = expert.size(1), I = gate_up.size(1) / 2;
  auto out = torch::zeros({N, x.size(1)}, torch::kFloat64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < K; ++s) {
      const int64_t e = expert[n][s].item<int64_t>();
      auto gu = torch::mv(gate_up[e].to(torch::kFloat64), x[n].to(torch::kFloat64));
      auto a = torch::silu(gu.narrow(0, 0, I)) * gu.narrow(0, I, I);
      out[n] += weight[n][s].item<double>() * torch::mv(down[e].to(torch::kFloat64), a);
    }
  return out;
}

TEST(MoeDecodeRef, MatchesTorchOnOddSizes) {
  torch::manual_seed(3);
  for (const auto& [N, K, E, H, I] : std::vector<std::array<int64_t, 5>>{{1, 2, 5, 37, 19}, {3, 4, 9, 64, 48}, {5, 1, 2, 8, 3}}) {
    auto x = torch::randn({N, H});
    auto expert = torch::randint(0, E, {N, K}, torch::kInt64);
    auto weight = torch::rand({N, K});
    auto gate_up = torch::randn({E, 2 * I, H}) / std::sqrt(double(H));
    auto down = torch::randn({E, H, I}) / std::sqrt(double(I));
    auto got = rtp::ops::moe_decode(x, expert, weight, gate_up, down);
    auto ref = torch_moe(x, expert, weight, gate_up, down);
    const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err, 1e-5 * (1 + ref.abs().max().item<double>())) << N << "x" << K << " of " << E << ", H " << H << ", I " << I;
  }
}

TEST(MoeDecodeRef, RejectsBadParameters) {
  rtp::kernels::MoeDecodeParams p;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  int64_t e = 0;
  p.x = p.weight = p.gate_up = p.down = &f;
  p.out = &f;
  p.expert = &e;
  p.tokens = 1, p.top_k = 3, p.experts = 2, p.hidden = 4, p.intermediate = 2;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("top_k exceeds"), std::string::npos);
  p.top_k = 1;
  p.dtype = rtp::kernels::DType::BF16;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("float32 only"), std::string::npos);
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, true)).find("act workspace"), std::string::npos);
  auto x = torch::randn({2, 8});
  const auto err = rtp::testing::error_of([&] {
    rtp::ops::moe_decode(x, torch::zeros({2, 2}, torch::kInt64), torch::ones({2, 2}), torch::randn({3, 6, 8}),
                         torch::randn({3, 8, 4}));
  });
  EXPECT_NE(err.find("down must be [E, H, I] = [3, 8, 3]"), std::string::npos) << err;
}

}  // namespace
