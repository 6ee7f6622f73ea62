// The few-row GEMV's CPU reference (rtp/kernels/gemv.h) against a float64 matrix product, on strided rows and odd
// sizes; parameter errors. (On the CPU the model keeps at::linear; linear_decode falls back to it there.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <string>
#include <vector>

#include "rtp/kernels/gemv.h"
#include "rtp/ops/linear_decode.h"

namespace {

TEST(GemvRef, MatchesTheMatrixProductOnStridedRows) {
  torch::manual_seed(61);
  for (const auto& [rows, m, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {2, 37, 129}, {4, 64, 1000}, {3, 5, 8}}) {
    auto wide = torch::randn({rows, k + 3});
    auto x = wide.narrow(1, 2, k);
    auto w = torch::randn({m, k});
    auto out = torch::empty({rows, m});
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = m, p.k = k, p.x_row_stride = k + 3;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    rtp::kernels::gemv_cpu(p);
    auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    EXPECT_LE((out.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5 * (1 + ref.abs().max().item<double>()))
        << rows << " x " << m << " x " << k;
  }
  // The torch-facing op on the CPU is at::linear.
  auto x = torch::randn({1, 1, 16}), w = torch::randn({8, 16});
  EXPECT_FALSE(rtp::ops::gemv_supported(x, w));
  EXPECT_TRUE(torch::equal(rtp::ops::linear_decode(x, w), at::linear(x, w)));
}

// The model's choice of the GEMV over cuBLAS per weight [m, k]: m <= ratio * k, ratio 8 by default.
TEST(GemvRef, PreferredWhereTheOutputIsAtMostRatioTimesTheReduction) {
  using rtp::ops::gemv_preferred;
  const auto w = [](int64_t m, int64_t k) { return torch::empty({m, k}); };
  EXPECT_TRUE(gemv_preferred(w(2048, 4096)));   // o projection of Qwen3-30B-A3B
  EXPECT_TRUE(gemv_preferred(w(5120, 2048)));   // its fused q/k/v
  EXPECT_FALSE(gemv_preferred(w(5120, 2048), 1));
  EXPECT_TRUE(gemv_preferred(w(8192, 2048), 4));
  EXPECT_FALSE(gemv_preferred(w(8193, 2048), 4));
  EXPECT_TRUE(gemv_preferred(w(16384, 2048)));
  EXPECT_FALSE(gemv_preferred(w(16385, 2048)));
  EXPECT_FALSE(gemv_preferred(w(151936, 2048)));  // the LM head stays with cuBLAS
  EXPECT_FALSE(gemv_preferred(torch::empty({8}), 8));
}

// The epilogue (residual add + RMSNorm by the last block) against the same steps in float64 tensor ops.
TEST(GemvRef, EpilogueAddsTheResidualAndNormalises) {
  torch::manual_seed(63);
  for (const auto& [rows, m, k] : std::vector<std::array<int64_t, 3>>{{1, 64, 96}, {3, 77, 40}}) {
    auto x = torch::randn({rows, k}), w = torch::randn({m, k}) / 8, res = torch::randn({rows, m});
    auto nw = torch::rand({m}) + 0.5;
    auto out = torch::empty({rows, m}), sum = torch::empty({rows, m}), normed = torch::empty({rows, m});
    uint32_t done = 0;
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = m, p.k = k, p.x_row_stride = k;
    p.residual = res.data_ptr<float>(), p.norm_weight = nw.data_ptr<float>(), p.sum_out = sum.data_ptr<float>();
    p.normed_out = normed.data_ptr<float>(), p.done = &done, p.eps = 1e-6f;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    rtp::kernels::gemv_cpu(p);
    auto s64 = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t()) + res.to(torch::kFloat64);
    auto n64 = nw.to(torch::kFloat64) * s64 * torch::rsqrt(s64.pow(2).mean(-1, true) + 1e-6);
    EXPECT_LE((sum.to(torch::kFloat64) - s64).abs().max().item<double>(), 1e-5 * (1 + s64.abs().max().item<double>()));
    EXPECT_LE((normed.to(torch::kFloat64) - n64).abs().max().item<double>(), 1e-5 * (1 + n64.abs().max().item<double>()));
    EXPECT_EQ(done, 0u);
  }
}

TEST(GemvRef, RejectsBadParameters) {
  rtp::kernels::GemvParams p;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  p.x = p.weight = p.out = &f;
  p.rows = 5, p.m = 2, p.k = 2, p.x_row_stride = 2;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("rows must be in [1, 4]"), std::string::npos);
  p.rows = 1, p.x_row_stride = 1;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("x_row_stride"), std::string::npos);
  p.x_row_stride = 2;
  p.residual = &f;  // an epilogue is all of its pointers or none
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("all of them"), std::string::npos);
  uint32_t done = 0;
  p.norm_weight = p.sum_out = p.normed_out = &f, p.done = &done, p.eps = -1.f;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("eps"), std::string::npos);
  p.eps = 1e-6f;
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
  p.layout = rtp::kernels::GemvLayout::WholeRows;  // the epilogue's last-block count lives in the split layout
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("SplitRows"), std::string::npos);
}

// Auto: whole rows per warp from 4096 rows on (warps enough in flight) where the reduction is no longer than the
// output, without an epilogue.
TEST(GemvRef, AutoLayoutTakesWholeRowsForManyRows) {
  using rtp::kernels::GemvLayout;
  rtp::kernels::GemvParams p;
  p.k = 1024, p.m = 6144;  // Qwen3-0.6B's gate/up
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::WholeRows);
  p.m = 4096;  // its q/k/v
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::WholeRows);
  p.m = 4095, p.k = 16;
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::SplitRows);
  p.m = 2048, p.k = 4096;  // Qwen3-30B-A3B's o projection
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::SplitRows);
  p.m = 4096, p.k = 12288;  // Qwen3-8B's down projection: a longer reduction than output
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::SplitRows);
  p.k = 4096;  // its o projection
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::WholeRows);
  uint32_t done = 0;
  p.done = &done;
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::SplitRows);
  p.done = nullptr, p.m = 16, p.layout = GemvLayout::WholeRows;
  EXPECT_EQ(rtp::kernels::resolved_layout(p), GemvLayout::WholeRows);
}

// On the CPU the fused op is not taken: the model keeps its separate projection and add + norm there.
TEST(GemvRef, FusedAddNormOnlyOnAGpu) {
  auto x = torch::randn({1, 1, 64}), w = torch::randn({32, 64}), res = torch::randn({1, 1, 32});
  auto nw = torch::ones({32}), done = torch::zeros({1}, torch::kInt32);
  EXPECT_FALSE(rtp::ops::gemv_add_rms_norm_supported(x, w, res, nw, done));
  EXPECT_THROW(rtp::ops::linear_decode_add_rms_norm(x, w, res, nw, 1e-6, done), std::exception);
}

}  // namespace

namespace {

// The model's per-weight choice on Qwen3's shapes: the kernel for every projection of a layer (m <= 8k), cuBLAS for the
// LM head; on the CPU both are at::linear.
TEST(GemvRef, ProjectPrefersTheKernelForLongReductions) {
  EXPECT_TRUE(rtp::ops::gemv_preferred(torch::empty({1024, 2048})));   // o projection of Qwen3-0.6B
  EXPECT_TRUE(rtp::ops::gemv_preferred(torch::empty({128, 2048})));    // a router
  EXPECT_TRUE(rtp::ops::gemv_preferred(torch::empty({4096, 1024})));   // q/k/v of Qwen3-0.6B
  EXPECT_TRUE(rtp::ops::gemv_preferred(torch::empty({6144, 1024})));   // its fused gate/up
  EXPECT_TRUE(rtp::ops::gemv_preferred(torch::empty({24576, 4096})));  // Qwen3-8B's
  EXPECT_FALSE(rtp::ops::gemv_preferred(torch::empty({151936, 1024}))); // the LM head
  auto x = torch::randn({1, 1, 64}), w = torch::randn({32, 64});
  EXPECT_TRUE(torch::equal(rtp::ops::project(x, w), at::linear(x, w)));
}

}  // namespace
