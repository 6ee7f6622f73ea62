// The few-row GEMV CUDA kernel (rtp/kernels/gemv.h) through ops::linear_decode against a float64 product: bf16 error at
// most twice that of at::linear in bf16 (cuBLAS, which it replaces for a decode step's projections), float32 within
// 1e-5 relative; Qwen3 projection shapes, odd sizes (the scalar path), 1-4 rows, rows strided inside a wider
// tensor, both warp layouts; five rows fall back to at::linear. The epilogues (add + RMSNorm, q/k norm + RoPE per head,
// MoE routing, SwiGLU) against float64 and the unfused path.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>
#include <string>
#include <vector>

#include "rtp/ops/kv_token_store.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/ops/moe_router.h"
#include "rtp/ops/rms_norm.h"
#include "rtp/ops/swiglu.h"

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

// The LM head's float32 logits (out_float32): each value the element-type output widened, bit for bit (the same
// products in the same order, rounded once to bf16 before the store), so within twice cuBLAS's bf16 error of float64;
// a real Qwen3 head (151936 x 1024), odd sizes on the scalar path, 1-4 rows, both layouts; float32 input as
// linear_decode; five rows as at::linear and the cast.
TEST(GemvCuda, FloatLogitsAreTheBf16OutputWidened) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(63);
  using rtp::kernels::GemvLayout;
  struct Case { int64_t rows, m, k; };
  for (const Case& c : {Case{1, 151936, 1024}, Case{4, 9001, 2048}, Case{3, 4099, 1001}, Case{2, 77, 64}}) {
    auto x = torch::randn({c.rows, 1, c.k}).to(dev, torch::kBFloat16);
    auto w = (torch::randn({c.m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(dev, torch::kBFloat16);
    auto ref = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    const double ce = (at::linear(x, w).to(torch::kFloat64) - ref).abs().max().item<double>();
    for (const GemvLayout layout : {GemvLayout::Auto, GemvLayout::SplitRows, GemvLayout::WholeRows}) {
      const std::string what = std::to_string(c.rows) + " x " + std::to_string(c.m) + " x " + std::to_string(c.k) +
                               " layout " + std::to_string(static_cast<int>(layout));
      auto logits = rtp::ops::linear_decode_logits(x, w, layout);
      ASSERT_EQ(logits.scalar_type(), torch::kFloat32) << what;
      ASSERT_EQ(logits.sizes(), torch::IntArrayRef({c.rows, 1, c.m})) << what;
      EXPECT_TRUE(torch::equal(logits, rtp::ops::linear_decode(x, w, layout).to(torch::kFloat32))) << what;
      const double e = (logits.to(torch::kFloat64) - ref).abs().max().item<double>();
      EXPECT_LE(e, 2 * ce + 1e-6) << what;
      if (layout == GemvLayout::Auto) std::cout << what << ": logits max |err| " << e << " (cuBLAS " << ce << ")\n";
    }
    auto x32 = x.to(torch::kFloat32), w32 = w.to(torch::kFloat32);
    EXPECT_TRUE(torch::equal(rtp::ops::linear_decode_logits(x32, w32), rtp::ops::linear_decode(x32, w32)));
  }
  auto x5 = torch::randn({5, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  auto w = torch::randn({32, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  EXPECT_TRUE(torch::equal(rtp::ops::linear_decode_logits(x5, w), at::linear(x5, w).to(torch::kFloat32)));
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

// The q/k/v projection with the q/k norms and RoPE in its launch (each head's last block) against the unfused path
// (linear_decode in the same layout, then rms_norm_rope_qk): bf16 bit-equal, the epilogue computing as norm_rope.cu
// does; float32 within 1e-6 (the compilers' contractions may differ). Against float64 the normed and roped heads within
// twice the unfused path's error. Qwen3 head counts and head_dim 128 and 64, 1-4 rows (batch x seq_len), both layouts;
// every count back at 0 after each launch.
TEST(GemvCuda, HeadNormRopeEpilogueMatchesTheUnfusedPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(67);
  const double eps = 1e-6;
  using rtp::kernels::GemvLayout;
  struct Case { int64_t batch, seq, q_heads, k_heads, D, k; };
  for (const Case& c : {Case{1, 1, 16, 8, 128, 1024}, Case{1, 1, 32, 4, 128, 2048}, Case{2, 2, 8, 2, 64, 1000},
                        Case{3, 1, 4, 1, 16, 77}, Case{1, 1, 32, 8, 128, 4096}}) {
    const int64_t rows = c.batch * c.seq, m = (c.q_heads + 2 * c.k_heads) * c.D;
    auto counts = torch::zeros({c.q_heads + c.k_heads}, torch::TensorOptions(torch::kInt32).device(dev));
    auto angle = torch::rand({c.seq, c.D / 2}) * 100;
    auto cos = torch::cat({angle.cos(), angle.cos()}, -1).to(dev), sin = torch::cat({angle.sin(), angle.sin()}, -1).to(dev);
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const auto o = torch::TensorOptions(dt).device(dev);
      auto x = torch::randn({c.batch, c.seq, c.k}).to(o);
      auto w = (torch::randn({m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(o);
      auto qw = (torch::rand({c.D}) + 0.5).to(o), kw = (torch::rand({c.D}) + 0.5).to(o);
      ASSERT_TRUE(rtp::ops::gemv_qk_norm_rope_supported(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, counts));
      for (const GemvLayout layout : {GemvLayout::Auto, GemvLayout::SplitRows, GemvLayout::WholeRows}) {
        const std::string what = std::to_string(rows) + " rows, " + std::to_string(c.q_heads) + "/" +
                                 std::to_string(c.k_heads) + " heads of " + std::to_string(c.D) + ", k " +
                                 std::to_string(c.k) + (dt == torch::kBFloat16 ? " bf16" : " f32") + " layout " +
                                 std::to_string(static_cast<int>(layout));
        auto got = rtp::ops::linear_decode_qk_norm_rope(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, eps, counts, layout);
        EXPECT_EQ(counts.abs().sum().item<int64_t>(), 0) << what << ": the counts must be back at 0";
        auto qkv = rtp::ops::linear_decode(x, w, layout);
        ASSERT_TRUE(torch::equal(got.qkv, qkv)) << what;
        auto q = qkv.narrow(-1, 0, c.q_heads * c.D).view({c.batch, c.seq, c.q_heads, c.D});
        auto k = qkv.narrow(-1, c.q_heads * c.D, c.k_heads * c.D).view({c.batch, c.seq, c.k_heads, c.D});
        auto [qn, qr, kn, kr] = rtp::ops::rms_norm_rope_qk(q, qw, k, kw, cos, sin, eps);
        const auto diff = [](const torch::Tensor& a, const torch::Tensor& b) {
          return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
        };
        if (dt == torch::kBFloat16) {
          EXPECT_TRUE(torch::equal(got.q_normed, qn)) << what << " " << diff(got.q_normed, qn);
          EXPECT_TRUE(torch::equal(got.q_roped, qr)) << what << " " << diff(got.q_roped, qr);
          EXPECT_TRUE(torch::equal(got.k_normed, kn)) << what << " " << diff(got.k_normed, kn);
          EXPECT_TRUE(torch::equal(got.k_roped, kr)) << what << " " << diff(got.k_roped, kr);
        } else {
          EXPECT_LE(diff(got.q_roped, qr), 1e-6) << what;
          EXPECT_LE(diff(got.k_roped, kr), 1e-6) << what;
          EXPECT_LE(diff(got.q_normed, qn), 1e-6) << what;
          EXPECT_LE(diff(got.k_normed, kn), 1e-6) << what;
        }
        // float64 from the same float64 product: the fused path no worse than twice the unfused one.
        auto y = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
        const auto ref = [&](int64_t first, int64_t heads, const torch::Tensor& weight) {
          auto hd = y.narrow(-1, first * c.D, heads * c.D).view({c.batch, c.seq, heads, c.D});
          auto n = weight.to(torch::kFloat64) * hd * torch::rsqrt(hd.pow(2).mean(-1, true) + eps);
          auto rotated = torch::cat({-n.narrow(-1, c.D / 2, c.D / 2), n.narrow(-1, 0, c.D / 2)}, -1);
          auto cs = cos.to(torch::kFloat64).view({1, c.seq, 1, c.D}), sn = sin.to(torch::kFloat64).view({1, c.seq, 1, c.D});
          return n * cs + rotated * sn;
        };
        auto qr64 = ref(0, c.q_heads, qw), kr64 = ref(c.q_heads, c.k_heads, kw);
        EXPECT_LE(diff(got.q_roped, qr64), 2 * diff(qr, qr64) + 1e-6) << what;
        EXPECT_LE(diff(got.k_roped, kr64), 2 * diff(kr, kr64) + 1e-6) << what;
        if (layout == GemvLayout::Auto && dt == torch::kBFloat16)
          std::cout << what << ": q roped max |err| " << diff(got.q_roped, qr64) << " (unfused " << diff(qr, qr64) << ")\n";
      }
    }
  }
}

// The token store in the q/k/v projection's launch (QkvTokenStore: each k and v head's last block writes the token's
// roped k and its v rows at the slot) against the launch without it followed by kv_token_store: the same projection
// and the same cache bytes, every other slot untouched; a slot past the capacity or negative writes nothing. Qwen3
// head counts, head_dim 128 and 64, 1-4 sequences, both layouts, bf16 and float32; the counts (q, k and v heads)
// back at 0 after each launch.
TEST(GemvCuda, HeadNormRopeEpilogueStoresTheTokenAsKvTokenStore) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(68);
  const double eps = 1e-6;
  using rtp::kernels::GemvLayout;
  struct Case { int64_t batch, q_heads, k_heads, D, k, capacity; };
  for (const Case& c : {Case{1, 16, 8, 128, 1024, 37}, Case{1, 32, 4, 128, 2048, 4100}, Case{4, 8, 2, 64, 1000, 5},
                        Case{3, 4, 1, 16, 77, 2}}) {
    const int64_t m = (c.q_heads + 2 * c.k_heads) * c.D;
    auto counts = torch::zeros({c.q_heads + 2 * c.k_heads}, torch::TensorOptions(torch::kInt32).device(dev));
    auto angle = torch::rand({1, c.D / 2}) * 100;
    auto cos = torch::cat({angle.cos(), angle.cos()}, -1).to(dev), sin = torch::cat({angle.sin(), angle.sin()}, -1).to(dev);
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const auto o = torch::TensorOptions(dt).device(dev);
      auto x = torch::randn({c.batch, 1, c.k}).to(o);
      auto w = (torch::randn({m, c.k}) / std::sqrt(static_cast<double>(c.k))).to(o);
      auto qw = (torch::rand({c.D}) + 0.5).to(o), kw = (torch::rand({c.D}) + 0.5).to(o);
      const auto cache0 = torch::randn({c.batch, c.k_heads, c.capacity, c.D}).to(o);
      for (const int64_t slot : {int64_t{0}, c.capacity - 1, c.capacity / 2, c.capacity, int64_t{-3}})
        for (const GemvLayout layout : {GemvLayout::SplitRows, GemvLayout::WholeRows}) {
          const std::string what = std::to_string(c.batch) + " sequences, " + std::to_string(c.q_heads) + "/" +
                                   std::to_string(c.k_heads) + " heads of " + std::to_string(c.D) + ", slot " +
                                   std::to_string(slot) + " of " + std::to_string(c.capacity) +
                                   (dt == torch::kBFloat16 ? " bf16" : " f32") + " layout " +
                                   std::to_string(static_cast<int>(layout));
          auto position = torch::full({1}, slot, torch::TensorOptions(torch::kInt64).device(dev));
          rtp::ops::QkvTokenStore store{cache0.clone(), cache0.clone() * 2, position};
          ASSERT_TRUE(rtp::ops::gemv_qk_norm_rope_supported(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, counts, store))
              << what;
          auto fused = rtp::ops::linear_decode_qk_norm_rope(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, eps, counts,
                                                            layout, store);
          EXPECT_EQ(counts.abs().sum().item<int64_t>(), 0) << what << ": the counts must be back at 0";
          auto plain = rtp::ops::linear_decode_qk_norm_rope(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, eps, counts,
                                                            layout);
          ASSERT_TRUE(torch::equal(fused.qkv, plain.qkv) && torch::equal(fused.k_roped, plain.k_roped)) << what;
          auto k_want = cache0.clone(), v_want = cache0.clone() * 2;
          auto k_rows = plain.k_roped.transpose(1, 2);  // [B, Hkv, 1, D]
          auto v_rows = plain.qkv.narrow(-1, (c.q_heads + c.k_heads) * c.D, c.k_heads * c.D)
                            .view({c.batch, 1, c.k_heads, c.D})
                            .transpose(1, 2);
          rtp::ops::kv_token_store(k_want, v_want, k_rows, v_rows, position);
          EXPECT_TRUE(torch::equal(store.k_cache, k_want)) << what;
          EXPECT_TRUE(torch::equal(store.v_cache, v_want)) << what;
          if (slot < 0 || slot >= c.capacity)
            EXPECT_TRUE(torch::equal(store.k_cache, cache0) && torch::equal(store.v_cache, cache0 * 2)) << what;
        }
      // What the store refuses: two tokens per sequence, a cache of another batch, too few counts.
      auto position = torch::zeros({1}, torch::TensorOptions(torch::kInt64).device(dev));
      rtp::ops::QkvTokenStore store{cache0.clone(), cache0.clone(), position};
      auto x2 = torch::randn({c.batch, 2, c.k}).to(o);
      auto cos2 = cos.repeat({2, 1}), sin2 = sin.repeat({2, 1});
      EXPECT_FALSE(rtp::ops::gemv_qk_norm_rope_supported(x2, w, qw, kw, cos2, sin2, c.q_heads, c.k_heads, counts, store));
      rtp::ops::QkvTokenStore other_batch{torch::zeros({c.batch + 1, c.k_heads, 4, c.D}, o),
                                          torch::zeros({c.batch + 1, c.k_heads, 4, c.D}, o), position};
      EXPECT_FALSE(
          rtp::ops::gemv_qk_norm_rope_supported(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads, counts, other_batch));
      EXPECT_FALSE(rtp::ops::gemv_qk_norm_rope_supported(x, w, qw, kw, cos, sin, c.q_heads, c.k_heads,
                                                         counts.narrow(0, 0, c.q_heads + c.k_heads), store));
    }
  }
}

// The router projection with the routing in its launch (the last block) against the unfused path (linear_decode, then
// moe_route, the same warp code): the same logits, expert ids and weights to the bit; Qwen3-MoE's 128 experts / 8 and
// other counts, 1-4 tokens, both layouts; the count back at 0.
TEST(GemvCuda, MoeRouteEpilogueMatchesTheRouterKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(68);
  using rtp::kernels::GemvLayout;
  auto count = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
  struct Case { int64_t rows, E, K, H; };
  for (const Case& c : {Case{1, 128, 8, 2048}, Case{4, 128, 8, 2048}, Case{2, 60, 4, 1000}, Case{3, 256, 8, 512},
                        Case{1, 512, 32, 64}, Case{2, 17, 17, 33}}) {
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      for (const bool norm : {true, false}) {
        const auto o = torch::TensorOptions(dt).device(dev);
        auto x = torch::randn({c.rows, c.H}).to(o);
        auto w = torch::randn({c.E, c.H}).to(o);
        ASSERT_TRUE(rtp::ops::gemv_moe_route_supported(x, w, c.K, count));
        for (const GemvLayout layout : {GemvLayout::Auto, GemvLayout::SplitRows, GemvLayout::WholeRows}) {
          const std::string what = std::to_string(c.rows) + " x " + std::to_string(c.E) + " top " + std::to_string(c.K) +
                                   (dt == torch::kBFloat16 ? " bf16" : " f32") + (norm ? " norm" : "") + " layout " +
                                   std::to_string(static_cast<int>(layout));
          auto [logits, expert, weight] = rtp::ops::linear_decode_moe_route(x, w, c.K, norm, count, layout);
          EXPECT_EQ(count.item<int32_t>(), 0) << what;
          auto plain = rtp::ops::linear_decode(x, w, layout);
          auto [e2, w2] = rtp::ops::moe_route(plain, c.K, norm);
          EXPECT_TRUE(torch::equal(logits, plain)) << what;
          EXPECT_TRUE(torch::equal(expert, e2)) << what;
          EXPECT_TRUE(torch::equal(weight, w2)) << what;
          // And against the float64 softmax of those logits: the kept experts are the K most probable.
          auto prob = torch::softmax(plain.to(torch::kFloat64), -1);
          auto kth = std::get<0>(torch::topk(prob, c.K, -1)).select(-1, c.K - 1);
          EXPECT_TRUE((prob.gather(-1, expert) >= kth.unsqueeze(-1) - 1e-6).all().item<bool>()) << what;
        }
      }
    }
  }
}

// SwiGLU in the gate/up launch (linear_decode_swiglu): the same bits as the whole-rows GEMV of the joined weight and
// then swiglu (each row's sum does not depend on the row beside it in its warp), and within twice that path's bf16
// error of float64 silu(g) * u (float32: 1e-5 relative); Qwen3-0.6B's and -8B's gate/up, odd I ending inside a block,
// odd k (the scalar path), rows strided inside a wider tensor, 1-4 rows.
TEST(GemvCuda, SwiGluEpilogueMatchesTheUnfusedPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(69);
  struct Case { int64_t rows, I, k; };
  for (const Case& c : {Case{1, 3072, 1024}, Case{2, 12288, 4096}, Case{4, 3077, 1000}, Case{3, 37, 77},
                        Case{1, 1, 8}}) {
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const std::string what = std::to_string(c.rows) + " x I " + std::to_string(c.I) + " x k " + std::to_string(c.k) +
                               (dt == torch::kBFloat16 ? " bf16" : " f32");
      auto wide = torch::randn({c.rows, c.k + 8}).to(dev, dt);
      auto x = wide.narrow(1, 8, c.k);
      auto w = (torch::randn({2 * c.I, c.k}) / std::sqrt(static_cast<double>(c.k))).to(dev, dt);
      ASSERT_TRUE(rtp::ops::gemv_swiglu_supported(x, w)) << what;
      auto got = rtp::ops::linear_decode_swiglu(x, w);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{c.rows, c.I})) << what;
      auto gu = rtp::ops::linear_decode(x, w, rtp::kernels::GemvLayout::WholeRows);
      auto unfused = rtp::ops::swiglu(gu.narrow(-1, 0, c.I), gu.narrow(-1, c.I, c.I));
      EXPECT_TRUE(torch::equal(got, unfused))
          << what << ": max difference " << (got.to(torch::kFloat64) - unfused.to(torch::kFloat64)).abs().max().item<double>();
      auto ref64 = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
      auto g = ref64.narrow(-1, 0, c.I), u = ref64.narrow(-1, c.I, c.I);
      auto ref = g * torch::sigmoid(g) * u;
      const double e = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
      if (dt == torch::kBFloat16) {
        // The naive bf16 path: cuBLAS's projection, then torch's silu and product in bf16.
        auto lin = at::linear(x, w);
        auto naive = torch::silu(lin.narrow(-1, 0, c.I)) * lin.narrow(-1, c.I, c.I);
        const double ne = (naive.to(torch::kFloat64) - ref).abs().max().item<double>();
        EXPECT_LE(e, 2 * ne + 1e-6) << what << " (naive bf16 " << ne << ")";
      } else {
        EXPECT_LE(e / (ref.abs().max().item<double>() + 1e-3), 1e-5) << what;
      }
    }
  }
  // An odd number of weight rows (no gate/up halves): not taken.
  auto x = torch::randn({1, 64}, torch::TensorOptions(torch::kBFloat16).device(dev));
  EXPECT_FALSE(rtp::ops::gemv_swiglu_supported(x, torch::randn({33, 64}, x.options())));
}

}  // namespace
