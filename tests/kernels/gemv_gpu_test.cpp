// The few-row GEMV CUDA kernel (rtp/kernels/gemv.h) through ops::linear_decode against a float64 product: bf16 error at
// most twice that of at::linear in bf16 (cuBLAS, which it replaces for a decode step's projections), float32 within
// 1e-5 relative; Qwen3 projection shapes, odd sizes (the scalar path), 1-4 rows, rows strided inside a wider
// tensor; five rows fall back to at::linear.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/ops/linear_decode.h"

namespace {

TEST(GemvCuda, WithinTwiceCublasBf16Error) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(62);
  struct Case { int64_t rows, m, k; };
  for (const Case& c : {Case{1, 4096, 1024}, Case{1, 1024, 2048}, Case{2, 6144, 1024}, Case{4, 2048, 4096},
                        Case{3, 77, 1000}, Case{1, 130, 33}}) {
    auto wide = torch::randn({c.rows, c.k + 8}).to(dev, torch::kBFloat16);
    auto x = wide.narrow(1, 8, c.k);  // rows strided, 16-byte aligned when k is a multiple of 8
    auto w = (torch::randn({c.m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(dev, torch::kBFloat16);
    ASSERT_TRUE(rtp::ops::gemv_supported(x, w));
    auto got = rtp::ops::linear_decode(x, w);
    auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    auto cublas = at::linear(x, w);
    const double e = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double ce = (cublas.to(torch::kFloat64) - ref).abs().max().item<double>();
    std::cout << c.rows << " x " << c.m << " x " << c.k << ": bf16 max |err| " << e << " (cuBLAS " << ce << ")\n";
    EXPECT_LE(e, 2 * ce + 1e-6) << c.rows << " x " << c.m << " x " << c.k;
    auto x32 = x.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
    auto got32 = rtp::ops::linear_decode(x32, w32);
    EXPECT_LE(((got32.to(torch::kFloat64) - ref).abs() / (ref.abs().max() + 1e-3)).max().item<double>(), 1e-5);
  }
  auto x5 = torch::randn({5, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  auto w = torch::randn({32, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  EXPECT_FALSE(rtp::ops::gemv_supported(x5, w));
  EXPECT_TRUE(torch::equal(rtp::ops::linear_decode(x5, w), at::linear(x5, w)));
}

}  // namespace
