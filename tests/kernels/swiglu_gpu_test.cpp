// The SwiGLU CUDA kernel (rtp/kernels/swiglu.h) against the float64 formula: bf16 error at most twice that of the
// eager silu(gate) * up it replaced and equal to it on almost every element (they round at the same points); float32
// within 1e-5 relative; the halves of a fused gate/up output read in place; odd sizes, Qwen3 widths, a prefill chunk's
// rows and more rows than a grid's y extent; the vector and element kernels bit-equal.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/ops/swiglu.h"

namespace {

TEST(SwiGluCuda, WithinTwiceEagerBf16OnFusedHalves) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the SwiGLU kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(13);
  for (const auto& [rows, inner] : std::vector<std::pair<int64_t, int64_t>>{{1, 3072}, {5, 777}, {300, 768}, {2, 1}, {4096, 3072}, {70001, 16}}) {
    auto gu = (torch::randn({1, rows, 2 * inner}) * 3).to(dev, torch::kBFloat16);
    auto gate = gu.narrow(-1, 0, inner), up = gu.narrow(-1, inner, inner);
    ASSERT_TRUE(rtp::ops::fused_swiglu_supported(gate, up));
    auto got = rtp::ops::swiglu(gate, up);
    auto eager = torch::silu(gate) * up;
    auto g = gate.to(torch::kFloat64), u = up.to(torch::kFloat64);
    auto ref = g / (1 + torch::exp(-g)) * u;
    const double e = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double ee = (eager.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double same = got.eq(eager).to(torch::kFloat64).mean().item<double>();
    std::cout << rows << " x " << inner << ": bf16 max |err| " << e << " (eager " << ee << "), equal to eager " << same << "\n";
    EXPECT_LE(e, 2 * ee + 1e-6);
    EXPECT_GE(same, 0.99);
    auto gu32 = gu.to(torch::kFloat32);
    auto got32 = rtp::ops::swiglu(gu32.narrow(-1, 0, inner), gu32.narrow(-1, inner, inner));
    EXPECT_LE(((got32.to(torch::kFloat64) - ref).abs() / (ref.abs() + 1)).max().item<double>(), 1e-5);
  }
  // 16-byte vectors where rows and pointers allow them, elements otherwise: the same bits either way (the halves
  // read one element off a 16-byte boundary take the element kernel).
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    const int64_t rows = 257, inner = 1536;
    auto buf = (torch::randn({rows, 2 * inner + 8}) * 3).to(dev, dtype);
    auto shifted = buf.narrow(-1, 1, 2 * inner);
    auto aligned = shifted.clone();
    auto vec = rtp::ops::swiglu(aligned.narrow(-1, 0, inner), aligned.narrow(-1, inner, inner));
    auto elem = rtp::ops::swiglu(shifted.narrow(-1, 0, inner), shifted.narrow(-1, inner, inner));
    EXPECT_TRUE(torch::equal(vec, elem)) << dtype;
  }
  // Not rows of one stride (a transposed view): the eager ops, same values.
  auto a = torch::randn({64, 32}, torch::TensorOptions(torch::kBFloat16).device(dev)).t();
  EXPECT_FALSE(rtp::ops::fused_swiglu_supported(a, a));
  EXPECT_TRUE(torch::equal(rtp::ops::swiglu(a, a), torch::silu(a) * a));
}

}  // namespace
