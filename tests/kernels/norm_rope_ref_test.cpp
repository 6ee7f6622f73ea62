// The fused RMSNorm (+ RoPE) CPU reference (rtp/kernels/norm_rope.h) against Hugging Face's formulas written with torch
// ops in double, on odd sizes and several positions and heads; parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "rtp/kernels/norm_rope.h"
#include "rtp/ops/rms_norm.h"
#include "test_util.h"

namespace {

torch::Tensor hf_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto xd = x.to(torch::kFloat64);
  return w.to(torch::kFloat64) * (xd * torch::rsqrt(xd.pow(2).mean(-1, true) + eps));
}

TEST(NormRopeRef, RmsNormMatchesTheFormula) {
  torch::manual_seed(2);
  for (const int64_t D : {1, 7, 128, 1000}) {
    auto x = torch::randn({3, 5, D}) * 3;
    auto w = torch::rand({D}) + 0.5;
    auto got = rtp::ops::rms_norm(x, w, 1e-6).to(torch::kFloat64);
    EXPECT_LE((got - hf_norm(x, w, 1e-6)).abs().max().item<double>(), 1e-5) << "dim " << D;
  }
}

TEST(NormRopeRef, RopeRotatesTheNormedHalves) {
  torch::manual_seed(4);
  const int64_t B = 2, T = 5, H = 3, D = 10;
  auto x = torch::randn({B, T, H, D});
  auto w = torch::rand({D}) + 0.5;
  auto angles = torch::rand({T, D / 2}) * 6;
  auto emb = torch::cat({angles, angles}, -1);
  auto cos = emb.cos() * 1.1, sin = emb.sin() * 1.1;  // a YaRN-like attention factor
  auto [normed, rotated] = rtp::ops::rms_norm_rope(x, w, cos, sin, 1e-6);
  auto n = hf_norm(x, w, 1e-6);  // [B, T, H, D]
  auto rot = torch::cat({-n.narrow(-1, D / 2, D / 2), n.narrow(-1, 0, D / 2)}, -1);
  auto c = cos.to(torch::kFloat64).view({1, T, 1, D}), s = sin.to(torch::kFloat64).view({1, T, 1, D});
  EXPECT_LE((normed.to(torch::kFloat64) - n).abs().max().item<double>(), 1e-5);
  EXPECT_LE((rotated.to(torch::kFloat64) - (n * c + rot * s)).abs().max().item<double>(), 1e-5);
}

// q or k narrowed out of a fused projection [B, T, (Hq + 2 Hkv) D]: read in place, the same results as a copy.
TEST(NormRopeRef, ReadsTokenStridedInputLikeAContiguousCopy) {
  torch::manual_seed(6);
  const int64_t B = 2, T = 3, H = 2, D = 8, N = 5 * D + 3;  // 3 elements of padding: an odd token stride
  auto wide = torch::randn({B, T, N});
  auto x = wide.narrow(-1, D, H * D).view({B, T, H, D});  // starts one head in, as k does
  ASSERT_FALSE(x.is_contiguous());
  auto w = torch::rand({D}) + 0.5;
  auto angles = torch::rand({T, D / 2}) * 6;
  auto emb = torch::cat({angles, angles}, -1);
  auto [n1, r1] = rtp::ops::rms_norm_rope(x, w, emb.cos(), emb.sin(), 1e-6);
  auto [n2, r2] = rtp::ops::rms_norm_rope(x.contiguous(), w, emb.cos(), emb.sin(), 1e-6);
  EXPECT_TRUE(torch::equal(n1, n2));
  EXPECT_TRUE(torch::equal(r1, r2));
  EXPECT_LE((n1.to(torch::kFloat64) - hf_norm(x, w, 1e-6)).abs().max().item<double>(), 1e-5);
}

// One token per sequence (T = 1): the stride of the token dimension is never used to step, so a contiguous tensor may
// carry any value there (as_strided, or a [B, H, 1, D] decode query transposed to [B, 1, H, D]). The op read the next
// sequence's rows at that stride: the rows of another tensor, or past the end (B = 2, stride 3 x H x D below: the
// second sequence's rows were read from elements it does not own), or refused a transposed decode query.
TEST(NormRopeRef, OneTokenPerSequenceReadsEachSequenceRowsWhateverTheTokenStride) {
  torch::manual_seed(7);
  const int64_t B = 2, H = 3, D = 8;
  auto w = torch::rand({D}) + 0.5;
  auto angles = torch::rand({1, D / 2}) * 6;
  auto emb = torch::cat({angles, angles}, -1);
  const auto cos = emb.cos(), sin = emb.sin();
  auto storage = torch::randn({4 * H * D});
  const auto odd = storage.as_strided({B, 1, H, D}, {H * D, 3 * H * D, D, 1});
  const auto transposed = torch::randn({B, H, 1, D}).transpose(1, 2);  // strides (H D, D, D, 1)
  for (const auto& x : {odd, transposed}) {
    ASSERT_TRUE(x.is_contiguous()) << x.strides();
    const auto copy = x.clone(torch::MemoryFormat::Contiguous);
    ASSERT_EQ(copy.stride(1), H * D);
    auto [n1, r1] = rtp::ops::rms_norm_rope(x, w, cos, sin, 1e-6);
    auto [n2, r2] = rtp::ops::rms_norm_rope(copy, w, cos, sin, 1e-6);
    EXPECT_TRUE(torch::equal(n1, n2)) << "strides " << x.strides();
    EXPECT_TRUE(torch::equal(r1, r2)) << "strides " << x.strides();
    EXPECT_LE((n1.to(torch::kFloat64) - hf_norm(copy, w, 1e-6)).abs().max().item<double>(), 1e-5) << x.strides();
    auto [qn, qr, kn, kr] = rtp::ops::rms_norm_rope_qk(x, w, x, w, cos, sin, 1e-6);
    EXPECT_TRUE(torch::equal(qn, n2) && torch::equal(qr, r2) && torch::equal(kn, n2) && torch::equal(kr, r2))
        << "rms_norm_rope_qk, strides " << x.strides();
  }
}

// A residual add and the norm after it: the sum is the float32 add, the norm that of the sum.
TEST(NormRopeRef, AddThenNormMatchesTheFormula) {
  torch::manual_seed(3);
  for (const int64_t D : {1, 9, 128, 1030}) {
    auto x = torch::randn({2, 3, D}) * 3, d = torch::randn({2, 3, D});
    auto w = torch::rand({D}) + 0.5;
    auto [sum, normed] = rtp::ops::add_rms_norm(x, d, w, 1e-6);
    EXPECT_TRUE(torch::equal(sum, x + d)) << "dim " << D;
    EXPECT_LE((normed.to(torch::kFloat64) - hf_norm(x + d, w, 1e-6)).abs().max().item<double>(), 1e-5) << "dim " << D;
  }
  const auto err = rtp::testing::error_of(
      [] { rtp::ops::add_rms_norm(torch::randn({2, 8}), torch::randn({3, 8}), torch::ones({8}), 1e-6); });
  EXPECT_NE(err.find("x and delta must share shape"), std::string::npos) << err;
}

TEST(NormRopeRef, RejectsBadParameters) {
  rtp::kernels::RmsNormParams p;
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  p.x = p.weight = p.out = &f;
  p.rows = 6, p.dim = 3;
  p.cos = p.sin = &f;
  p.rope_out = &f;
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("even dim"), std::string::npos);
  p.dim = 4, p.heads = 4, p.seq_len = 1;
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("batch x seq_len x heads"), std::string::npos);
  p.heads = 2, p.seq_len = 3, p.x_token_stride = 7;  // less than heads x dim: rows would overlap
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("x_token_stride"), std::string::npos);
  p.x_token_stride = 0;
  p.residual = &f;  // without sum_out
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("residual and sum_out"), std::string::npos);
  p.sum_out = &f;  // with RoPE
  EXPECT_NE(std::string(rtp::kernels::check_rms_norm_params(p, false)).find("no RoPE"), std::string::npos);
  const auto err = rtp::testing::error_of([] { rtp::ops::rms_norm(torch::randn({2, 8}), torch::ones({7}), 1e-6); });
  EXPECT_NE(err.find("weight must be [8]"), std::string::npos) << err;
}

}  // namespace
