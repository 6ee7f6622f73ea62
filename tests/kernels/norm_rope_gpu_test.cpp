// The fused RMSNorm (+ RoPE) CUDA kernels against the float64 formula: bf16 error at most twice that of the eager
// bf16 ops the model ran before (eight kernels for the norm, six more for RoPE), and equal to them on almost every
// element (they round at the same points; only the float32 sum of squares may differ in its last bit); float32
// within 1e-5. Odd dims, many rows (a 4096-token prefill chunk's 24 heads and its hidden rows, which take the
// warp-per-row and 16-byte vector kernels), the head sizes of Qwen3 (128) and hidden sizes. The warp-per-row
// kernel's bits against the block-per-row order: gemv_gpu_test's q/k epilogue test.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/model/rope.h"
#include "rtp/ops/rms_norm.h"

namespace {

torch::Tensor eager_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto xf = x.to(torch::kFloat32);
  return w * (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + eps)).to(x.dtype());
}

torch::Tensor f64_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto xd = x.to(torch::kFloat64);
  return w.to(torch::kFloat64) * (xd * torch::rsqrt(xd.pow(2).mean(-1, true) + eps));
}

double err(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a.cpu().to(torch::kFloat64) - ref.cpu()).abs().max().item<double>();
}

TEST(NormRopeCuda, NormWithinTwiceEagerBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the fused norm kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(8);
  for (const auto& [rows, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1024}, {7, 4096}, {513, 128}, {33, 77},
                                                                       {4096, 4096}, {2049, 1024}, {16, 2048}}) {
    auto x = (torch::randn({rows, D}) * 4).to(dev, torch::kBFloat16);
    auto w = (torch::rand({D}) + 0.5).to(dev, torch::kBFloat16);
    auto ref = f64_norm(x, w, 1e-6);
    auto got = rtp::ops::rms_norm(x, w, 1e-6), eager = eager_norm(x, w, 1e-6);
    const double e = err(got, ref), ee = err(eager, ref);
    const double same = got.eq(eager).to(torch::kFloat64).mean().item<double>();
    std::cout << rows << " x " << D << ": bf16 max |err| " << e << " (eager " << ee << "), equal to eager " << same << "\n";
    EXPECT_LE(e, 2 * ee + 1e-6);
    EXPECT_GE(same, 0.99);
    auto x32 = x.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
    EXPECT_LE(err(rtp::ops::rms_norm(x32, w32, 1e-6), f64_norm(x32, w32, 1e-6)), 1e-5 * 4);
  }
}

TEST(NormRopeCuda, NormAndRopeWithinTwiceEagerBf16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the fused norm kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(9);
  rtp::model::ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 1e6;
  for (const auto& [B, T, H] : std::vector<std::array<int64_t, 3>>{{1, 1, 16}, {2, 37, 8}, {1, 300, 4}, {1, 4096, 24}}) {
    const auto tables = rtp::model::rope_tables(c, 1000, T, dev);
    auto x = (torch::randn({B, T, H, 128}) * 2).to(dev, torch::kBFloat16);
    auto w = (torch::rand({128}) + 0.5).to(dev, torch::kBFloat16);
    auto [normed, rotated] = rtp::ops::rms_norm_rope(x, w, tables.cos, tables.sin, 1e-6);
    // Eager, as the model ran it: the norm, then RoPE on the [B, H, T, D] view.
    auto en = eager_norm(x, w, 1e-6);
    auto er = rtp::model::apply_rope(en.transpose(1, 2), tables).transpose(1, 2);
    // float64 reference.
    auto n = f64_norm(x, w, 1e-6);
    auto rot = torch::cat({-n.narrow(-1, 64, 64), n.narrow(-1, 0, 64)}, -1);
    auto cs = tables.cos.to(torch::kFloat64).view({1, T, 1, 128}), sn = tables.sin.to(torch::kFloat64).view({1, T, 1, 128});
    auto ref = n * cs + rot * sn;
    const double e = err(rotated, ref), ee = err(er, ref);
    const double same = rotated.eq(er).to(torch::kFloat64).mean().item<double>();
    std::cout << B << " x " << T << " x " << H << " heads: RoPE bf16 max |err| " << e << " (eager " << ee
              << "), equal to eager " << same << "; norm equal " << normed.eq(en).to(torch::kFloat64).mean().item<double>() << "\n";
    EXPECT_LE(e, 2 * ee + 1e-6);
    EXPECT_LE(err(normed, n), 2 * err(en, n) + 1e-6);
    EXPECT_GE(same, 0.99);
    auto [n32, r32] = rtp::ops::rms_norm_rope(x.to(torch::kFloat32), w.to(torch::kFloat32), tables.cos, tables.sin, 1e-6);
    EXPECT_LE(err(r32, ref), 1e-4);
    // The same heads read in place from a fused q/k/v projection's output: bit-identical to the contiguous input.
    auto wide = torch::randn({B, T, (H + 2) * 128 + 8}, torch::TensorOptions(torch::kBFloat16).device(dev));
    wide.narrow(-1, 128, H * 128).copy_(x.view({B, T, H * 128}));
    auto xs = wide.narrow(-1, 128, H * 128).view({B, T, H, 128});
    ASSERT_TRUE(rtp::ops::fused_rms_norm_rope_supported(xs, w));
    auto [ns, rs] = rtp::ops::rms_norm_rope(xs, w, tables.cos, tables.sin, 1e-6);
    EXPECT_TRUE(torch::equal(ns, normed) && torch::equal(rs, rotated)) << B << " x " << T << " x " << H << " strided";
  }
}

// The residual add fused into the norm: the sum equals the eager bf16 add bit for bit, the norm is within twice the
// eager norm's error of the float64 formula; q and k normed in one launch equal two separate calls.
TEST(NormRopeCuda, AddNormAndPairedQkMatchTheSeparateKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the fused norm kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(10);
  for (const auto& [rows, D] : std::vector<std::pair<int64_t, int64_t>>{{1, 1024}, {9, 4096}, {33, 77}, {4096, 4096},
                                                                       {300, 1024}}) {
    auto x = (torch::randn({rows, D}) * 4).to(dev, torch::kBFloat16), d = torch::randn({rows, D}).to(dev, torch::kBFloat16);
    auto w = (torch::rand({D}) + 0.5).to(dev, torch::kBFloat16);
    auto [sum, normed] = rtp::ops::add_rms_norm(x, d, w, 1e-6);
    EXPECT_TRUE(torch::equal(sum, x + d)) << rows << " x " << D;
    auto ref = f64_norm(x + d, w, 1e-6);
    EXPECT_LE(err(normed, ref), 2 * err(eager_norm(x + d, w, 1e-6), ref) + 1e-6) << rows << " x " << D;
    EXPECT_TRUE(torch::equal(normed, rtp::ops::rms_norm(x + d, w, 1e-6))) << rows << " x " << D;
  }
  rtp::model::ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 1e6;
  const auto tables = rtp::model::rope_tables(c, 77, 3, dev);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    const int64_t B = 1, T = 3, Hq = 16, Hkv = 4;
    auto qkv = torch::randn({B, T, (Hq + 2 * Hkv) * 128}, torch::TensorOptions(dtype).device(dev));
    auto q = qkv.narrow(-1, 0, Hq * 128).view({B, T, Hq, 128}), k = qkv.narrow(-1, Hq * 128, Hkv * 128).view({B, T, Hkv, 128});
    auto qw = (torch::rand({128}) + 0.5).to(dev, dtype), kw = (torch::rand({128}) + 0.5).to(dev, dtype);
    auto [qn, qr, kn, kr] = rtp::ops::rms_norm_rope_qk(q, qw, k, kw, tables.cos, tables.sin, 1e-6);
    auto [qn1, qr1] = rtp::ops::rms_norm_rope(q, qw, tables.cos, tables.sin, 1e-6);
    auto [kn1, kr1] = rtp::ops::rms_norm_rope(k, kw, tables.cos, tables.sin, 1e-6);
    EXPECT_TRUE(torch::equal(qn, qn1) && torch::equal(qr, qr1) && torch::equal(kn, kn1) && torch::equal(kr, kr1))
        << "paired q/k " << dtype;
  }
}

// A prefill chunk's q/k heads (from kTwoRowsPerWarpMin rows: two rows per warp) give the bits of the same rows in
// calls too small for that (one row per warp): an odd row count (the last warp's second row past the end) and an odd
// q row count (a warp holding q's last row and k's first), q and k read in place from a fused projection, float32
// and bf16, head_dim 128 and 64.
TEST(NormRopeCuda, TwoRowsPerWarpGiveTheOneRowBits) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the fused norm kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(12);
  for (const int64_t D : {128, 64}) {
    rtp::model::ModelConfig c;
    c.head_dim = D;
    c.rope_theta = 1e6;
    const int64_t T = 1001, Hq = 15, Hkv = 4, piece = 100;  // 19,019 rows in all; 1,900 per piece of 100 tokens
    const auto tables = rtp::model::rope_tables(c, 5, T, dev);
    for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
      auto qkv = torch::randn({1, T, (Hq + 2 * Hkv) * D}, torch::TensorOptions(dtype).device(dev)) * 3;
      auto q = qkv.narrow(-1, 0, Hq * D).view({1, T, Hq, D}), k = qkv.narrow(-1, Hq * D, Hkv * D).view({1, T, Hkv, D});
      auto qw = (torch::rand({D}) + 0.5).to(dev, dtype), kw = (torch::rand({D}) + 0.5).to(dev, dtype);
      const auto [qn, qr, kn, kr] = rtp::ops::rms_norm_rope_qk(q, qw, k, kw, tables.cos, tables.sin, 1e-6);
      bool same = true;
      for (int64_t t0 = 0; t0 < T; t0 += piece) {
        const int64_t n = std::min(piece, T - t0);
        const auto [pqn, pqr, pkn, pkr] =
            rtp::ops::rms_norm_rope_qk(q.narrow(1, t0, n), qw, k.narrow(1, t0, n), kw, tables.cos.narrow(0, t0, n),
                                       tables.sin.narrow(0, t0, n), 1e-6);
        same = same && torch::equal(qn.narrow(1, t0, n), pqn) && torch::equal(qr.narrow(1, t0, n), pqr) &&
               torch::equal(kn.narrow(1, t0, n), pkn) && torch::equal(kr.narrow(1, t0, n), pkr);
      }
      EXPECT_TRUE(same) << "head_dim " << D << ", " << dtype;
      // And the one-norm launch (q alone: 15,015 rows, odd) the same bits as the paired one.
      const auto [qn1, qr1] = rtp::ops::rms_norm_rope(q, qw, tables.cos, tables.sin, 1e-6);
      EXPECT_TRUE(torch::equal(qn1, qn) && torch::equal(qr1, qr)) << "head_dim " << D << ", " << dtype;
    }
  }
}

}  // namespace
