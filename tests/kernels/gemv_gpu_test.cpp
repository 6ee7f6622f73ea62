// The few-row GEMV CUDA kernel (rtp/kernels/gemv.h) through ops::linear_decode against a float64 product: bf16 error at
// most twice that of at::linear in bf16 (cuBLAS, which it replaces for a decode step's projections), float32 within
// 1e-5 relative; Qwen3 projection shapes, odd sizes (the scalar path), 1-4 rows, rows strided inside a wider
// tensor, both warp layouts; five rows fall back to at::linear. The add + RMSNorm epilogue against float64 and the unfused path.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>
#include <string>

#include "rtp/ops/linear_decode.h"
#include "rtp/ops/rms_norm.h"

namespace {

TEST(GemvCuda, WithinTwiceCublasBf16Error) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(62);
  struct Case { int64_t rows, m, k; };
  using rtp::kernels::GemvLayout;
  // Each shape in both layouts and Auto's choice: the split rows for long reductions, whole rows for the wide ones
  // (Qwen3-8B's and -0.6B's gate/up), odd row counts that end inside a block or a warp's pair.
  for (const Case& c : {Case{1, 4096, 1024}, Case{1, 1024, 2048}, Case{2, 6144, 1024}, Case{4, 2048, 4096},
                        Case{1, 24576, 4096}, Case{3, 6150, 1000}, Case{3, 77, 1000}, Case{1, 130, 33},
                        Case{4, 301, 77}}) {
    auto wide = torch::randn({c.rows, c.k + 8}).to(dev, torch::kBFloat16);
    auto x = wide.narrow(1, 8, c.k);  // rows strided, 16-byte aligned when k is a multiple of 8
    auto w = (torch::randn({c.m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(dev, torch::kBFloat16);
    ASSERT_TRUE(rtp::ops::gemv_supported(x, w));
    auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    auto cublas = at::linear(x, w);
    const double ce = (cublas.to(torch::kFloat64) - ref).abs().max().item<double>();
    auto x32 = x.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
    for (const GemvLayout layout : {GemvLayout::Auto, GemvLayout::SplitRows, GemvLayout::WholeRows}) {
      const std::string what = std::to_string(c.rows) + " x " + std::to_string(c.m) + " x " + std::to_string(c.k) +
                               " layout " + std::to_string(static_cast<int>(layout));
      auto got = rtp::ops::linear_decode(x, w, layout);
      const double e = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
      std::cout << what << ": bf16 max |err| " << e << " (cuBLAS " << ce << ")\n";
      EXPECT_LE(e, 2 * ce + 1e-6) << what;
      auto got32 = rtp::ops::linear_decode(x32, w32, layout);
      EXPECT_LE(((got32.to(torch::kFloat64) - ref).abs() / (ref.abs().max() + 1e-3)).max().item<double>(), 1e-5)
          << what;
    }
  }
  auto x5 = torch::randn({5, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  auto w = torch::randn({32, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  EXPECT_FALSE(rtp::ops::gemv_supported(x5, w));
  EXPECT_TRUE(torch::equal(rtp::ops::linear_decode(x5, w), at::linear(x5, w)));
}

// The o projection with its residual add + RMSNorm in one launch (the last block's epilogue) against float64: the
// sum within the unfused path's error (linear_decode, then add_rms_norm), bit-equal to it where the norm's row layout
// is the same (2048 wide: 256 threads of 8 elements in both); the count back at 0 after each launch, twice in a row.
TEST(GemvCuda, AddRmsNormEpilogueMatchesTheUnfusedPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(64);
  const double eps = 1e-6;
  auto done = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
  const auto split = rtp::kernels::GemvLayout::SplitRows;  // the epilogue's layout: the same products as the fused launch
  struct Case { int64_t rows, m, k; };
  for (const Case& c : {Case{1, 2048, 4096}, Case{1, 1024, 2048}, Case{2, 4096, 4096}, Case{3, 77, 1000},
                        Case{4, 2048, 4096}, Case{1, 130, 33}}) {
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const auto o = torch::TensorOptions(dt).device(dev);
      auto x = torch::randn({c.rows, 1, c.k}).to(o);
      auto w = (torch::randn({c.m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(o);
      auto res = torch::randn({c.rows, 1, c.m}).to(o);
      auto nw = (torch::rand({c.m}) + 0.5).to(o);
      ASSERT_TRUE(rtp::ops::gemv_add_rms_norm_supported(x, w, res, nw, done));
      for (int rep = 0; rep < 2; ++rep) {
        auto [sum, normed] = rtp::ops::linear_decode_add_rms_norm(x, w, res, nw, eps, done);
        EXPECT_EQ(done.item<int32_t>(), 0) << "the count must be back at 0";
        auto [usum, unormed] = rtp::ops::add_rms_norm(res, rtp::ops::linear_decode(x, w, split), nw, eps);
        auto s64 = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t()) + res.to(torch::kFloat64);
        auto n64 = nw.to(torch::kFloat64) * s64 * torch::rsqrt(s64.pow(2).mean(-1, true) + eps);
        const auto err = [](const torch::Tensor& a, const torch::Tensor& r) {
          return (a.to(torch::kFloat64) - r).abs().max().item<double>();
        };
        const std::string what = std::to_string(c.rows) + " x " + std::to_string(c.m) + " x " + std::to_string(c.k) +
                                 (dt == torch::kBFloat16 ? " bf16" : " f32");
        EXPECT_TRUE(torch::equal(sum, usum)) << what;  // the same products, the same rounding
        EXPECT_LE(err(normed, n64), 2 * err(unormed, n64) + 1e-6) << what;
        if (c.m == 2048) EXPECT_TRUE(torch::equal(normed, unormed)) << what;
        if (rep == 0 && dt == torch::kBFloat16)
          std::cout << what << ": normed max |err| " << err(normed, n64) << " (unfused " << err(unormed, n64) << ")\n";
      }
    }
  }
}

}  // namespace
