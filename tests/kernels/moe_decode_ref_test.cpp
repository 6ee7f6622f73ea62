// The MoE decode CPU reference (rtp/kernels/moe_decode.h) against the same block written with torch ops in double
// (per token and slot: silu(gate x) * (up x), down-projected, weighted, summed), on odd sizes; the model's MoE layers
// (the HF-made qwen3-moe-tiny fixtures) through the reference equal the model's grouped eager path; parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "model/model_fixtures.h"
#include "rtp/kernels/moe_decode.h"
#include "rtp/model/qwen3.h"
#include "rtp/model/rope.h"
#include "rtp/ops/moe_decode.h"
#include "test_util.h"

namespace {

torch::Tensor torch_moe(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                        const torch::Tensor& gate_up, const torch::Tensor& down) {
  const int64_t N = x.size(0), K = expert.size(1), I = gate_up.size(1) / 2;
  auto out = torch::zeros({N, x.size(1)}, torch::kFloat64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < K; ++s) {
      const int64_t e = expert[n][s].item<int64_t>();
      auto gu = torch::mv(gate_up[e].to(torch::kFloat64), x[n].to(torch::kFloat64));
      auto a = torch::silu(gu.narrow(0, 0, I)) * gu.narrow(0, I, I);
      out[n] += weight[n][s].item<double>() * torch::mv(down[e].to(torch::kFloat64), a);
    }
  return out;
}

TEST(MoeDecodeRef, MatchesTorchOnOddSizes) {
  torch::manual_seed(3);
  for (const auto& [N, K, E, H, I] : std::vector<std::array<int64_t, 5>>{{1, 2, 5, 37, 19}, {3, 4, 9, 64, 48}, {5, 1, 2, 8, 3}}) {
    auto x = torch::randn({N, H});
    auto expert = torch::randint(0, E, {N, K}, torch::kInt64);
    auto weight = torch::rand({N, K});
    auto gate_up = torch::randn({E, 2 * I, H}) / std::sqrt(double(H));
    auto down = torch::randn({E, H, I}) / std::sqrt(double(I));
    auto got = rtp::ops::moe_decode(x, expert, weight, gate_up, down);
    auto ref = torch_moe(x, expert, weight, gate_up, down);
    const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err, 1e-5 * (1 + ref.abs().max().item<double>())) << N << "x" << K << " of " << E << ", H " << H << ", I " << I;
  }
}

// The model's MoE layers through the reference equal its grouped eager path. On a GPU the model itself sends a
// decode step's few tokens through ops::moe_decode (experts by id); on the CPU it always takes the grouped path
// (moe_mlp groups the (token, slot) pairs by expert), so the test rebuilds the by-id computation from the model's own
// weights and inputs: for every MoE layer of the fixtures (norm_topk_prob true and false), run the layers with the
// model's public pieces, take the post-attention residual finish_layer leaves in x.base and the grouped MoE output it
// leaves pending, and compare that output with ops::moe_decode (the CPU reference) fed by a router written here with
// plain loops in double: RMS norm (post_attention_layernorm), router logits, softmax, top-k by repeated arg-max,
// optional renormalisation over the k. Batch 2 of 1, 5 and 13 tokens (13 > kMoeDecodeMaxTokens: the grouped path
// with several tokens per expert).
TEST(MoeDecodeRef, ModelMoeLayerThroughReferenceEqualsGroupedEagerPath) {
  for (const std::string name : {"qwen3-moe-tiny", "qwen3-moe-tiny-noNorm"}) {
    auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir(name), torch::kCPU, torch::kFloat32);
    const auto& cfg = model.config();
    std::map<std::string, torch::Tensor> w;
    for (const auto& [n, t] : model.named_parameters()) w[n] = t;
    const int64_t H = cfg.hidden_size, E = cfg.num_experts, K = cfg.num_experts_per_tok;
    torch::manual_seed(21);
    torch::NoGradGuard no_grad;
    int moe_layers_checked = 0;
    for (const int64_t T : {int64_t{1}, int64_t{5}, int64_t{13}}) {
      const auto ids = torch::randint(0, cfg.vocab_size, {2, T}, torch::kInt64);
      const auto rope = rtp::model::rope_tables(cfg, 0, T, torch::kCPU);
      rtp::model::ResidualStream x{model.embed(ids), {}};
      rtp::model::DenseAttention dense;
      for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
        auto in = model.attention_inputs(l, x, rope);
        x = model.finish_layer(l, std::move(x), dense.attend(in));
        if (!cfg.layer_is_moe(l)) continue;
        ++moe_layers_checked;
        const std::string pre = "model.layers." + std::to_string(l) + ".";
        const auto base = x.base.reshape({-1, H}).to(torch::kFloat64).contiguous();  // [N, H]
        const int64_t N = base.size(0);
        const auto B = base.accessor<double, 2>();
        const auto nw = w.at(pre + "post_attention_layernorm.weight").to(torch::kFloat64).contiguous();
        const auto gw = w.at(pre + "mlp.gate.weight").to(torch::kFloat64).contiguous();  // [E, H]
        const auto NW = nw.accessor<double, 1>();
        const auto GW = gw.accessor<double, 2>();
        auto h = torch::empty({N, H}, torch::kFloat64);
        auto expert = torch::empty({N, K}, torch::kInt64);
        auto weight = torch::empty({N, K}, torch::kFloat64);
        auto Hh = h.accessor<double, 2>();
        auto Ex = expert.accessor<int64_t, 2>();
        auto Wt = weight.accessor<double, 2>();
        for (int64_t n = 0; n < N; ++n) {
          double ms = 0;
          for (int64_t d = 0; d < H; ++d) ms += B[n][d] * B[n][d] / H;
          for (int64_t d = 0; d < H; ++d) Hh[n][d] = NW[d] * B[n][d] / std::sqrt(ms + cfg.rms_norm_eps);
          std::vector<double> prob(E);
          for (int64_t e = 0; e < E; ++e) {
            double s = 0;
            for (int64_t d = 0; d < H; ++d) s += GW[e][d] * Hh[n][d];
            prob[e] = s;
          }
          const double mx = *std::max_element(prob.begin(), prob.end());
          double z = 0;
          for (auto& p : prob) z += (p = std::exp(p - mx));
          for (auto& p : prob) p /= z;
          std::vector<char> taken(E, 0);
          double kept = 0;
          for (int64_t s = 0; s < K; ++s) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; ++e)
              if (!taken[e] && (best < 0 || prob[e] > prob[best])) best = e;
            taken[best] = 1;
            Ex[n][s] = best;
            Wt[n][s] = prob[best];
            kept += prob[best];
          }
          if (cfg.norm_topk_prob)
            for (int64_t s = 0; s < K; ++s) Wt[n][s] /= kept;
        }
        const auto ref = rtp::ops::moe_decode(h.to(torch::kFloat32), expert, weight.to(torch::kFloat32),
                                              w.at(pre + "mlp.experts.gate_up_proj"), w.at(pre + "mlp.experts.down_proj"));
        ASSERT_TRUE(x.pending.defined()) << name << " layer " << l;
        const auto eager = x.pending.reshape({-1, H});
        const double err = (eager.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>();
        const double scale = ref.abs().max().item<double>();
        EXPECT_GT(scale, 0) << name << " layer " << l;
        EXPECT_LE(err, 1e-5 * (1 + scale)) << name << ", layer " << l << ", " << T << " tokens x 2";
      }
      x = {x.resolved(), {}};
    }
    // qwen3-moe-tiny: layers 1 and 3 of 4 are MoE (decoder_sparse_step 2); -noNorm: both of its 2 layers (step 1).
    // Each for the three lengths.
    EXPECT_EQ(moe_layers_checked, 2 * 3) << name;
  }
}

TEST(MoeDecodeRef, RejectsBadParameters) {
  rtp::kernels::MoeDecodeParams p;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  int64_t e = 0;
  p.x = p.weight = p.gate_up = p.down = &f;
  p.out = &f;
  p.expert = &e;
  p.tokens = 1, p.top_k = 3, p.experts = 2, p.hidden = 4, p.intermediate = 2;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("top_k exceeds"), std::string::npos);
  p.top_k = 1;
  p.dtype = rtp::kernels::DType::BF16;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("float32 only"), std::string::npos);
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, true)).find("act workspace"), std::string::npos);
  auto x = torch::randn({2, 8});
  const auto err = rtp::testing::error_of([&] {
    rtp::ops::moe_decode(x, torch::zeros({2, 2}, torch::kInt64), torch::ones({2, 2}), torch::randn({3, 6, 8}),
                         torch::randn({3, 8, 4}));
  });
  EXPECT_NE(err.find("down must be [E, H, I] = [3, 8, 3]"), std::string::npos) << err;
  // A launch shape out of range is an error on every device (the CPU reference ignores the shape, but a caller's
  // typo should not wait for a GPU to surface).
  const auto moe = [&](const rtp::kernels::MoeDecodeLaunchShape& shape) {
    return rtp::testing::error_of([&] {
      rtp::ops::moe_decode(x, torch::zeros({2, 2}, torch::kInt64), torch::ones({2, 2}), torch::randn({3, 6, 8}),
                           torch::randn({3, 8, 3}), shape);
    });
  };
  EXPECT_EQ(moe({}), "<no error: the call succeeded>");
  EXPECT_EQ(moe({4, 4, true, false}), "<no error: the call succeeded>");
  EXPECT_NE(moe({3, 8, false}).find("gate_up_rows_per_warp must be 1, 2 or 4"), std::string::npos) << moe({3, 8, false});
  EXPECT_NE(moe({1, 16, false}).find("down_warps_per_block must be 4 or 8"), std::string::npos) << moe({1, 16, false});
  // One launch for both passes: 8 down warps and 1 or 2 rows; the CPU reference ignores it, a GPU needs the counts.
  EXPECT_EQ(moe({2, 8, true, true}), "<no error: the call succeeded>");
  EXPECT_NE(moe({2, 4, true, true}).find("one_launch takes 8 down warps"), std::string::npos) << moe({2, 4, true, true});
  EXPECT_NE(moe({4, 8, true, true}).find("1 or 2 gate/up rows"), std::string::npos) << moe({4, 8, true, true});
  p.dtype = rtp::kernels::DType::F32;
  p.act = &f;
  p.shape.one_launch = true;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, true)).find("three counts"), std::string::npos);
  uint32_t counts[3] = {};
  p.done = counts;
  EXPECT_STREQ(rtp::kernels::check_moe_decode_params(p, true), "");
  p.shape.one_launch = false;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, true)).find("what would it count"), std::string::npos);
}

// The reference's add + RMSNorm epilogue (moe_decode.h): sum the float32 add of the block's output and the residual,
// normed against the norm computed here in float64; the epilogue's operands all or none; the fused op is GPU-only and
// says so on the CPU.
TEST(MoeDecodeRef, AddRmsNormEpilogueMatchesTorch) {
  torch::manual_seed(5);
  const int64_t N = 3, K = 2, E = 5, H = 37, I = 19;
  auto x = torch::randn({N, H});
  auto expert = torch::randint(0, E, {N, K}, torch::kInt64);
  auto weight = torch::rand({N, K});
  auto gate_up = torch::randn({E, 2 * I, H}) / std::sqrt(double(H));
  auto down = torch::randn({E, H, I}) / std::sqrt(double(I));
  auto residual = torch::randn({N, H}), nw = torch::rand({H}) + 0.5;
  auto out = torch::empty({N, H}), sum = torch::empty({N, H}), normed = torch::empty({N, H});
  uint32_t done = 0;
  rtp::kernels::MoeDecodeParams p;
  p.x = x.data_ptr(), p.expert = expert.data_ptr<int64_t>(), p.weight = weight.data_ptr();
  p.gate_up = gate_up.data_ptr(), p.down = down.data_ptr(), p.out = out.data_ptr();
  p.tokens = N, p.top_k = K, p.experts = E, p.hidden = H, p.intermediate = I;
  p.residual = residual.data_ptr(), p.norm_weight = nw.data_ptr(), p.sum_out = sum.data_ptr();
  p.normed_out = normed.data_ptr(), p.eps = 1e-6f;
  EXPECT_NE(std::string(rtp::kernels::check_moe_decode_params(p, false)).find("all of them"), std::string::npos);
  p.done = &done;
  ASSERT_STREQ(rtp::kernels::check_moe_decode_params(p, false), "");
  rtp::kernels::moe_decode_cpu(p);
  EXPECT_TRUE(torch::equal(out, rtp::ops::moe_decode(x, expert, weight, gate_up, down)));
  EXPECT_TRUE(torch::equal(sum, out + residual));
  auto s64 = sum.to(torch::kFloat64);
  auto n64 = nw.to(torch::kFloat64) * s64 / torch::sqrt(s64.pow(2).mean(-1, true) + 1e-6);
  EXPECT_LE((normed.to(torch::kFloat64) - n64).abs().max().item<double>(), 1e-6 * (1 + n64.abs().max().item<double>()));
  auto counter = torch::zeros({1}, torch::kInt32);
  EXPECT_FALSE(rtp::ops::moe_decode_add_rms_norm_supported(x, weight, gate_up, down, residual, nw, counter));
  const auto err = rtp::testing::error_of([&] {
    rtp::ops::moe_decode_add_rms_norm(x, expert, weight, gate_up, down, residual, nw, 1e-6, counter);
  });
  EXPECT_NE(err.find("expected x [N, H] on a GPU"), std::string::npos) << err;
}

}  // namespace
