// The MoE router's CPU reference (rtp/kernels/moe_router.h) against Hugging Face's routing written with torch ops in
// double (softmax, topk, renormalise), with and without norm_topk_prob, Qwen3-30B-A3B's 128 experts / top-8 and odd
// sizes; the tie rule (lower expert id first); parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "rtp/kernels/moe_router.h"

namespace {

struct Routed {
  torch::Tensor expert, weight;
};

Routed route_cpu(const torch::Tensor& logits, int64_t K, bool norm) {
  const int64_t N = logits.size(0);
  Routed r{torch::empty({N, K}, torch::kInt64), torch::empty({N, K})};
  rtp::kernels::MoeRouterParams p;
  p.logits = logits.data_ptr<float>();
  p.expert = r.expert.data_ptr<int64_t>();
  p.weight = r.weight.data_ptr<float>();
  p.tokens = N, p.experts = logits.size(1), p.top_k = K, p.norm_topk_prob = norm;
  EXPECT_STREQ(rtp::kernels::check_moe_router_params(p, false), "");
  rtp::kernels::moe_router_cpu(p);
  return r;
}

TEST(MoeRouterRef, MatchesSoftmaxTopkAndRenormalisation) {
  torch::manual_seed(41);
  for (const auto& [N, E, K] : std::vector<std::array<int64_t, 3>>{{1, 128, 8}, {5, 128, 8}, {3, 60, 4}, {2, 7, 7}}) {
    for (const bool norm : {true, false}) {
      auto logits = torch::randn({N, E}) * 2;
      const auto got = route_cpu(logits, K, norm);
      auto probs = torch::softmax(logits.to(torch::kFloat64), -1);
      auto [w, e] = torch::topk(probs, K, -1);
      if (norm) w = w / w.sum(-1, true);
      EXPECT_TRUE(torch::equal(got.expert, e)) << N << " x " << E << " top " << K << " norm " << norm;
      EXPECT_LE((got.weight.to(torch::kFloat64) - w).abs().max().item<double>(), 1e-7) << N << " x " << E;
    }
  }
}

TEST(MoeRouterRef, TiesGoToTheLowerExpertId) {
  auto logits = torch::tensor({{1.f, 3.f, 2.f, 3.f, 0.f, 2.f}});
  const auto got = route_cpu(logits, 4, true);
  EXPECT_TRUE(torch::equal(got.expert, torch::tensor({{1, 3, 2, 5}}, torch::kInt64))) << got.expert;
  EXPECT_NEAR(got.weight[0][0].item<float>(), got.weight[0][1].item<float>(), 0.f);
}

TEST(MoeRouterRef, RejectsBadParameters) {
  rtp::kernels::MoeRouterParams p;
  EXPECT_NE(std::string(rtp::kernels::check_moe_router_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  int64_t i = 0;
  p.logits = p.weight = &f;
  p.expert = &i;
  p.tokens = 1, p.experts = 8, p.top_k = 9;
  EXPECT_NE(std::string(rtp::kernels::check_moe_router_params(p, false)).find("top_k"), std::string::npos);
  p.experts = 600, p.top_k = 8;
  EXPECT_STREQ(rtp::kernels::check_moe_router_params(p, false), "");
  EXPECT_NE(std::string(rtp::kernels::check_moe_router_params(p, true)).find("at most 512"), std::string::npos);
}

}  // namespace
