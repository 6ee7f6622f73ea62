// The attention merge's CPU reference (rtp/kernels/attention_merge.h) against the merge written with torch ops in
// float64 (softmax weights of the two log-sum-exps), on strided layouts and odd sizes; a hand-made case; parameter
// errors. And the torch op (rtp/ops/attention_merge.h) on the CPU, its eager path, against the same.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "kernels/attention_merge_test_params.h"
#include "rtp/core/error.h"
#include "rtp/kernels/attention_merge.h"
#include "rtp/ops/attention_merge.h"

namespace {

using rtp::test::attention_merge_params;

// The two parts' weights as a softmax over their log-sum-exps, in float64.
torch::Tensor float64_merge(const torch::Tensor& a, const torch::Tensor& la, const torch::Tensor& b, const torch::Tensor& lb) {
  const auto w = torch::softmax(torch::stack({la, lb}).to(torch::kFloat64), 0).unsqueeze(-1);
  return w[0] * a.to(torch::kFloat64) + w[1] * b.to(torch::kFloat64);
}

TEST(AttentionMergeRef, MatchesFloat64OnStridedLayouts) {
  torch::manual_seed(8);
  for (const auto& [B, H, T, D] : {std::array<int64_t, 4>{1, 1, 1, 1}, {2, 3, 17, 5}, {1, 8, 64, 32}}) {
    // a as cuDNN lays its output out ([B, T, H, D] in memory), b contiguous, lse of a strided, large differences
    // between the parts' log-sum-exps as well as small ones.
    const auto a = torch::randn({B, T, H, D}).transpose(1, 2);
    const auto b = torch::randn({B, H, T, D});
    const auto la = (torch::randn({B, T, H}) * 20).transpose(1, 2);
    const auto lb = torch::randn({B, H, T}) * 20;
    auto out = torch::full({B, H, T, D}, 7.f);
    auto p = attention_merge_params(a, la, b, lb, out);
    ASSERT_STREQ(rtp::kernels::check_attention_merge_params(p, false), "");
    rtp::kernels::attention_merge_cpu(p);
    const auto expected = float64_merge(a, la, b, lb);
    EXPECT_LE((out.to(torch::kFloat64) - expected).abs().max().item<double>(), 1e-6) << B << " " << H << " " << T << " " << D;
    // The op's eager path (on the CPU): same arithmetic in float32, lse as [B, H, T, 1] too.
    const auto op = rtp::ops::attention_merge(a, la.unsqueeze(-1), b, lb);
    EXPECT_LE((op.to(torch::kFloat64) - expected).abs().max().item<double>(), 1e-5);
    EXPECT_EQ(op.sizes(), a.sizes());
  }
}

TEST(AttentionMergeRef, HandMadeShares) {
  // lse 0 against log 3: a counts 1/4, b 3/4.
  const auto a = torch::tensor({1.f, 2.f}).view({1, 1, 1, 2}), b = torch::tensor({5.f, -2.f}).view({1, 1, 1, 2});
  const auto la = torch::zeros({1, 1, 1}), lb = torch::full({1, 1, 1}, static_cast<float>(std::log(3.0)));
  auto out = torch::empty({1, 1, 1, 2});
  auto p = attention_merge_params(a, la, b, lb, out);
  rtp::kernels::attention_merge_cpu(p);
  EXPECT_NEAR(out[0][0][0][0].item<double>(), 4.0, 1e-6);
  EXPECT_NEAR(out[0][0][0][1].item<double>(), -1.0, 1e-6);
  // The op (eager on the CPU), the log-sum-exp also as [B, H, T, 1] (cuDNN's layout).
  const auto got = rtp::ops::attention_merge(a, la, b, lb.unsqueeze(-1));
  EXPECT_NEAR(got[0][0][0][0].item<double>(), 0.25 * 1 + 0.75 * 5, 1e-6);
  EXPECT_NEAR(got[0][0][0][1].item<double>(), 0.25 * 2 + 0.75 * -2, 1e-6);
  // Scores far apart (-1000 against +1000): no overflow, the larger part takes everything.
  const auto far = rtp::ops::attention_merge(a, torch::full({1, 1, 1}, -1000.0), b, torch::full({1, 1, 1}, 1000.0));
  EXPECT_TRUE(torch::equal(far, b));
}

TEST(AttentionMergeRef, BadParametersAreNamed) {
  const auto a = torch::zeros({1, 1, 2, 6}), l = torch::zeros({1, 1, 2});
  auto out = torch::empty({1, 1, 2, 6});
  auto p = attention_merge_params(a, l, a, l, out);
  p.lse_b = nullptr;
  EXPECT_NE(std::string(rtp::kernels::check_attention_merge_params(p, false)).find("null"), std::string::npos);
  p = attention_merge_params(a, l, a, l, out);
  p.tokens = 0;
  EXPECT_NE(std::string(rtp::kernels::check_attention_merge_params(p, false)).find("positive"), std::string::npos);
  p = attention_merge_params(a, l, a, l, out);
  p.dtype = rtp::kernels::DType::BF16;
  EXPECT_NE(std::string(rtp::kernels::check_attention_merge_params(p, false)).find("float32 only"), std::string::npos);
  p = attention_merge_params(a, l, a, l, out);  // head_dim 6 floats: not a 16-byte multiple
  EXPECT_NE(std::string(rtp::kernels::check_attention_merge_params(p, true)).find("16-byte"), std::string::npos);
  EXPECT_THROW(rtp::ops::attention_merge(a, torch::zeros({1, 1, 3}), a, l), rtp::Error);
  EXPECT_THROW(rtp::ops::attention_merge(a, l, torch::zeros({1, 2, 2, 6}), l), rtp::Error);
  const auto o = torch::zeros({1, 2, 3, 4});
  EXPECT_THROW(rtp::ops::attention_merge(o, torch::zeros({1, 2, 3}), torch::zeros({1, 2, 4, 4}), torch::zeros({1, 2, 4})),
               rtp::Error);
  EXPECT_THROW(rtp::ops::attention_merge(o, torch::zeros({1, 2, 5}), o, torch::zeros({1, 2, 3})), rtp::Error);
}

}  // namespace
