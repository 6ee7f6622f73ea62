// The few-row GEMV's CPU reference (rtp/kernels/gemv.h) against a float64 matrix product, on strided rows and odd
// sizes; parameter errors. (On the CPU the model keeps at::linear; linear_decode falls back to it there.)
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
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

// SwiGLU (the weight's gate rows, then its up rows) against silu(g) * u of the float64 product, strided rows, odd I.
TEST(GemvRef, SwiGluTakesTheGateAndUpHalves) {
  torch::manual_seed(64);
  for (const auto& [rows, I, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {2, 37, 129}, {4, 64, 40}}) {
    auto wide = torch::randn({rows, k + 3});
    auto x = wide.narrow(1, 2, k);
    auto w = torch::randn({2 * I, k}) / 4;
    auto out = torch::full({rows, I}, std::nanf(""));
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = 2 * I, p.k = k, p.x_row_stride = k + 3;
    p.swiglu = true;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    EXPECT_EQ(rtp::kernels::resolved_layout(p), rtp::kernels::GemvLayout::WholeRows);
    rtp::kernels::gemv_cpu(p);
    auto gu = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    auto g = gu.narrow(1, 0, I), u = gu.narrow(1, I, I);
    auto ref = g / (1 + torch::exp(-g)) * u;
    EXPECT_LE((out.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5 * (1 + ref.abs().max().item<double>()))
        << rows << " x " << I << " x " << k;
  }
  // On the CPU the op is not taken (the model keeps its unfused path there).
  EXPECT_FALSE(rtp::ops::gemv_swiglu_supported(torch::randn({1, 16}), torch::randn({8, 16})));
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

// The head epilogue (q/k RMSNorm + RoPE per head of a fused q/k/v projection) against float64 tensor ops: every q and k
// head normed with its weight and rotated by its row's position (rows = batch x seq_len), v rows left as projected.
TEST(GemvRef, HeadEpilogueNormsAndRotatesQAndK) {
  torch::manual_seed(65);
  struct Case { int64_t batch, seq, q_heads, k_heads, D, k; };
  for (const Case& c : {Case{1, 1, 4, 2, 16, 40}, Case{2, 2, 3, 1, 8, 33}, Case{3, 1, 2, 2, 32, 64}}) {
    const int64_t rows = c.batch * c.seq, m = (c.q_heads + 2 * c.k_heads) * c.D;
    auto x = torch::randn({rows, c.k}), w = torch::randn({m, c.k}) / 4;
    auto qw = torch::rand({c.D}) + 0.5, kw = torch::rand({c.D}) + 0.5;
    auto angle = torch::rand({c.seq, c.D / 2}) * 6;
    auto cos = torch::cat({angle.cos(), angle.cos()}, -1).contiguous(), sin = torch::cat({angle.sin(), angle.sin()}, -1).contiguous();
    auto out = torch::empty({rows, m});
    auto qn = torch::empty({rows, c.q_heads, c.D}), qr = torch::empty_like(qn);
    auto kn = torch::empty({rows, c.k_heads, c.D}), kr = torch::empty_like(kn);
    std::vector<uint32_t> done(static_cast<size_t>(c.q_heads + c.k_heads), 0u);
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = m, p.k = c.k, p.x_row_stride = c.k;
    auto& h = p.head_norm_rope;
    h.q_weight = qw.data_ptr<float>(), h.k_weight = kw.data_ptr<float>();
    h.cos = cos.data_ptr<float>(), h.sin = sin.data_ptr<float>();
    h.q_normed = qn.data_ptr<float>(), h.q_roped = qr.data_ptr<float>();
    h.k_normed = kn.data_ptr<float>(), h.k_roped = kr.data_ptr<float>();
    h.done = done.data(), h.q_heads = c.q_heads, h.k_heads = c.k_heads, h.head_dim = c.D, h.seq_len = c.seq;
    h.eps = 1e-6f;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    rtp::kernels::gemv_cpu(p);
    auto y = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
    const auto norm_rope = [&](const torch::Tensor& heads, const torch::Tensor& weight) {
      auto n = weight.to(torch::kFloat64) * heads * torch::rsqrt(heads.pow(2).mean(-1, true) + 1e-6);
      auto t = torch::arange(rows) % c.seq;  // each row's position
      auto cs = cos.to(torch::kFloat64).index_select(0, t).unsqueeze(1), sn = sin.to(torch::kFloat64).index_select(0, t).unsqueeze(1);
      auto rotated = torch::cat({-n.narrow(-1, c.D / 2, c.D / 2), n.narrow(-1, 0, c.D / 2)}, -1);
      return std::make_pair(n, n * cs + rotated * sn);
    };
    auto [qn64, qr64] = norm_rope(y.narrow(1, 0, c.q_heads * c.D).reshape({rows, c.q_heads, c.D}), qw);
    auto [kn64, kr64] = norm_rope(y.narrow(1, c.q_heads * c.D, c.k_heads * c.D).reshape({rows, c.k_heads, c.D}), kw);
    const auto err = [](const torch::Tensor& a, const torch::Tensor& r) {
      return (a.to(torch::kFloat64) - r).abs().max().item<double>() / (1 + r.abs().max().item<double>());
    };
    EXPECT_LE(err(out, y), 1e-5);
    EXPECT_LE(err(qn, qn64), 1e-5);
    EXPECT_LE(err(qr, qr64), 1e-5);
    EXPECT_LE(err(kn, kn64), 1e-5);
    EXPECT_LE(err(kr, kr64), 1e-5);
    // RoPE is a rotation: each pair's length is the normed pair's.
    EXPECT_LE(err(qr.pow(2).sum(-1), qn64.pow(2).sum(-1)), 1e-5);
    for (const auto v : done) EXPECT_EQ(v, 0u);
  }
}

// The token store in the head epilogue's launch: the roped k rows and out's v rows of every sequence written at the
// slot of a dense cache [rows, k_heads, capacity, D], as kv_token_store (a plain copy) writes them; every other slot
// untouched; a slot outside [0, capacity) writes nothing.
TEST(GemvRef, HeadEpilogueStoresTheTokenInTheCache) {
  torch::manual_seed(66);
  const int64_t rows = 3, q_heads = 4, k_heads = 2, D = 8, k = 24, capacity = 7;
  const int64_t m = (q_heads + 2 * k_heads) * D;
  auto x = torch::randn({rows, k}), w = torch::randn({m, k}) / 4;
  auto qw = torch::rand({D}) + 0.5, kw = torch::rand({D}) + 0.5;
  auto cos = torch::rand({1, D}), sin = torch::rand({1, D});
  for (const int64_t slot : {int64_t{0}, int64_t{4}, capacity - 1, capacity, int64_t{-1}}) {
    auto out = torch::empty({rows, m});
    auto qn = torch::empty({rows, q_heads, D}), qr = torch::empty_like(qn);
    auto kn = torch::empty({rows, k_heads, D}), kr = torch::empty_like(kn);
    auto k_cache = torch::randn({rows, k_heads, capacity, D}), v_cache = torch::randn({rows, k_heads, capacity, D});
    const auto k_before = k_cache.clone(), v_before = v_cache.clone();
    std::vector<uint32_t> done(static_cast<size_t>(q_heads + 2 * k_heads), 0u);
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = m, p.k = k, p.x_row_stride = k;
    auto& h = p.head_norm_rope;
    h.q_weight = qw.data_ptr<float>(), h.k_weight = kw.data_ptr<float>();
    h.cos = cos.data_ptr<float>(), h.sin = sin.data_ptr<float>();
    h.q_normed = qn.data_ptr<float>(), h.q_roped = qr.data_ptr<float>();
    h.k_normed = kn.data_ptr<float>(), h.k_roped = kr.data_ptr<float>();
    h.done = done.data(), h.q_heads = q_heads, h.k_heads = k_heads, h.head_dim = D, h.seq_len = 1, h.eps = 1e-6f;
    h.k_cache = k_cache.data_ptr<float>(), h.v_cache = v_cache.data_ptr<float>(), h.position = &slot;
    h.capacity = capacity;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    rtp::kernels::gemv_cpu(p);
    auto k_want = k_before.clone(), v_want = v_before.clone();
    if (slot >= 0 && slot < capacity) {
      k_want.select(2, slot).copy_(kr);
      v_want.select(2, slot).copy_(out.narrow(1, (q_heads + k_heads) * D, k_heads * D).view({rows, k_heads, D}));
    }
    EXPECT_TRUE(torch::equal(k_cache, k_want)) << "slot " << slot;
    EXPECT_TRUE(torch::equal(v_cache, v_want)) << "slot " << slot;
  }
}

// The routing epilogue against a float64 softmax and a stable sort of the probabilities (ties to the lower expert).
TEST(GemvRef, RoutingEpilogueTakesTheTopKOfTheLogitsSoftmax) {
  torch::manual_seed(66);
  for (const bool norm : {true, false}) {
    const int64_t rows = 3, E = 40, K = 5, k = 24;
    auto x = torch::randn({rows, k}), w = torch::randn({E, k});
    w[7] = w[3];  // a tie: experts 3 and 7 get the same logit
    auto out = torch::empty({rows, E}), weight = torch::empty({rows, K});
    auto expert = torch::empty({rows, K}, torch::kInt64);
    uint32_t done = 0;
    rtp::kernels::GemvParams p;
    p.x = x.data_ptr<float>(), p.weight = w.data_ptr<float>(), p.out = out.data_ptr<float>();
    p.rows = rows, p.m = E, p.k = k, p.x_row_stride = k;
    p.moe_route.expert = expert.data_ptr<int64_t>(), p.moe_route.weight = weight.data_ptr<float>();
    p.moe_route.done = &done, p.moe_route.top_k = K, p.moe_route.norm_topk_prob = norm;
    ASSERT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
    rtp::kernels::gemv_cpu(p);
    auto prob = torch::softmax(out.to(torch::kFloat64), -1);
    for (int64_t n = 0; n < rows; ++n) {
      std::vector<int64_t> order(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) order[e] = e;
      auto pr = prob[n];
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return pr[a].item<double>() > pr[b].item<double>(); });
      double kept = 0;
      for (int64_t s = 0; s < K; ++s) kept += pr[order[s]].item<double>();
      for (int64_t s = 0; s < K; ++s) {
        EXPECT_EQ(expert[n][s].item<int64_t>(), order[s]) << "row " << n << " slot " << s;
        const double want = pr[order[s]].item<double>() / (norm ? kept : 1.0);
        EXPECT_NEAR(weight[n][s].item<double>(), want, 1e-6) << "row " << n << " slot " << s;
      }
    }
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
  p.layout = rtp::kernels::GemvLayout::Auto;
  uint32_t counts[4] = {};
  p.moe_route.done = counts, p.moe_route.expert = reinterpret_cast<int64_t*>(&f), p.moe_route.weight = &f;
  p.moe_route.top_k = 1;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("at most one epilogue"), std::string::npos);
  p.residual = p.norm_weight = p.sum_out = p.normed_out = nullptr, p.done = nullptr;
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
  p.moe_route.top_k = 3;  // more than the m = 2 experts
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("top_k"), std::string::npos);
  p.moe_route = {};
  // SwiGLU: m even, the whole-rows layout, no other epilogue.
  p.swiglu = true;
  p.m = 3;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("m even"), std::string::npos);
  p.m = 2, p.layout = rtp::kernels::GemvLayout::SplitRows;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("WholeRows"), std::string::npos);
  p.layout = rtp::kernels::GemvLayout::Auto;
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
  p.moe_route.done = counts, p.moe_route.expert = reinterpret_cast<int64_t*>(&f), p.moe_route.weight = &f;
  p.moe_route.top_k = 1;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("at most one epilogue"), std::string::npos);
  p.moe_route = {};
  p.swiglu = false;
  // A float32 output carries no epilogue (they read out in the element type).
  p.out_float32 = true;
  p.moe_route.done = counts, p.moe_route.expert = reinterpret_cast<int64_t*>(&f), p.moe_route.weight = &f;
  p.moe_route.top_k = 1;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("out_float32"), std::string::npos);
  p.moe_route = {};
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
  p.out_float32 = false;
  // The head epilogue: all its pointers, heads that fit m, an even head_dim; on CUDA a multiple of 16.
  float buf[64] = {};
  auto& h = p.head_norm_rope;
  h.done = counts;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("all of them"), std::string::npos);
  h.q_weight = h.k_weight = h.q_normed = h.q_roped = h.k_normed = h.k_roped = buf, h.cos = h.sin = buf;
  h.q_heads = 1, h.k_heads = 1, h.head_dim = 2;
  p.m = 6, p.k = 2;
  p.weight = buf, p.out = buf;
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, true)).find("multiple of 16"), std::string::npos);
  h.head_dim = 3;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("even"), std::string::npos);
  h.head_dim = 4;  // (1 + 1) x 4 > m = 6
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("exceed m"), std::string::npos);
  // The token store: caches and position all or none, one token per sequence, q, k and v heads within m.
  h.head_dim = 2;
  const int64_t slot = 0;
  h.k_cache = buf;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("k_cache, v_cache and position"),
            std::string::npos);
  h.v_cache = buf, h.position = &slot, h.capacity = 4;
  EXPECT_STREQ(rtp::kernels::check_gemv_params(p, false), "");  // (1 + 2 x 1) x 2 = m
  h.seq_len = 2;
  p.rows = 2;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("seq_len 1"), std::string::npos);
  h.seq_len = 1;
  h.capacity = 0;
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("positive capacity"), std::string::npos);
  h.capacity = 4;
  h.q_heads = 2;  // (2 + 1) x 2 = m: q and k fit, v does not
  EXPECT_NE(std::string(rtp::kernels::check_gemv_params(p, false)).find("q, k and v"), std::string::npos);
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
  // The same for the q/k norm and routing launches: the model's CPU path keeps the separate ops.
  auto qkv = torch::randn({64, 64}), hw = torch::ones({16}), cs = torch::ones({1, 16}), counts = torch::zeros({3}, torch::kInt32);
  EXPECT_FALSE(rtp::ops::gemv_qk_norm_rope_supported(x, qkv, hw, hw, cs, cs, 2, 1, counts));
  EXPECT_FALSE(rtp::ops::gemv_moe_route_supported(x.view({1, 64}), w, 4, done));
  EXPECT_THROW(rtp::ops::linear_decode_moe_route(x.view({1, 64}), w, 4, true, done), std::exception);
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
  // The LM head's logits on the CPU: at::linear, then float32.
  auto xb = x.to(torch::kBFloat16), wb = w.to(torch::kBFloat16);
  auto logits = rtp::ops::linear_decode_logits(xb, wb);
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(logits, at::linear(xb, wb).to(torch::kFloat32)));
}

}  // namespace
