// DenseAttention (the model's default attention) against float64 loops: one decode query over a strided, narrowed
// cache (the KV cache hands out views of its buffers), a chunk of queries at the end of the keys, and a whole
// prompt; GQA groups of 1 to 4; float32 and bfloat16 storage.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "rtp/model/attention_seam.h"

namespace {

using rtp::model::DenseAttention;
using rtp::model::LayerAttentionInputs;

// out[b][h][i] = sum_j softmax_j(q[b,h,i] . k[b,h/G,j] * scale) v[b,h/G,j] over keys j <= i + (Tk - Tq).
torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  const auto qd = q.to(torch::kFloat64).contiguous(), kd = k.to(torch::kFloat64).contiguous(),
             vd = v.to(torch::kFloat64).contiguous();
  const int64_t B = q.size(0), Hq = q.size(1), Tq = q.size(2), D = q.size(3), Hkv = k.size(1), Tk = k.size(2);
  const int64_t G = Hq / Hkv;
  auto out = torch::zeros({B, Hq, Tq, D}, torch::kFloat64);
  auto Q = qd.accessor<double, 4>(), K = kd.accessor<double, 4>(), V = vd.accessor<double, 4>();
  auto O = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t last = i + (Tk - Tq), kv = h / G;
        std::vector<double> s(static_cast<size_t>(last + 1));
        double mx = -std::numeric_limits<double>::infinity(), z = 0;
        for (int64_t j = 0; j <= last; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += Q[b][h][i][d] * K[b][kv][j][d];
          s[static_cast<size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        for (auto& x : s) z += (x = std::exp(x - mx));
        for (int64_t j = 0; j <= last; ++j)
          for (int64_t d = 0; d < D; ++d) O[b][h][i][d] += s[static_cast<size_t>(j)] / z * V[b][kv][j][d];
      }
  return out;
}

struct Case {
  int64_t B, Hq, Hkv, Tq, Tk, capacity, D;
};

TEST(DenseAttention, MatchesFloat64LoopsOnStridedCaches) {
  torch::manual_seed(11);
  const Case cases[] = {
      {1, 2, 1, 1, 1, 1, 16},       {2, 6, 2, 1, 173, 300, 20},  {1, 8, 2, 1, 1024, 2048, 16},
      {3, 4, 4, 1, 57, 64, 8},      {2, 6, 3, 9, 131, 200, 12},  {1, 4, 1, 33, 33, 33, 24},
  };
  for (auto dtype : {torch::kFloat32, torch::kBFloat16})
    for (const auto& c : cases) {
      LayerAttentionInputs in;
      in.q = torch::randn({c.B, c.Hq, c.Tq, c.D}).to(dtype);
      // The cache's buffers are [B, Hkv, capacity, D]; attention sees the first Tk positions.
      in.k = torch::randn({c.B, c.Hkv, c.capacity, c.D}).to(dtype).narrow(2, 0, c.Tk);
      in.v = torch::randn({c.B, c.Hkv, c.capacity, c.D}).to(dtype).narrow(2, 0, c.Tk);
      in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const auto expected = reference(in.q, in.k, in.v, in.scale);
      const auto got = DenseAttention().attend(in);
      ASSERT_EQ(got.sizes(), expected.sizes());
      EXPECT_EQ(got.scalar_type(), dtype);
      const double err = (got.to(torch::kFloat64) - expected).abs().max().item<double>();
      // float32: rounding only. bfloat16: at most twice the error of the exact result rounded to bfloat16 (the
      // best a bfloat16 output can do), plus float32 rounding.
      const double bound = dtype == torch::kFloat32
                               ? 2e-6
                               : 2 * (expected.to(torch::kBFloat16).to(torch::kFloat64) - expected).abs().max().item<double>() + 1e-6;
      EXPECT_LE(err, bound) << "B " << c.B << " Hq " << c.Hq << " Hkv " << c.Hkv << " Tq " << c.Tq << " Tk " << c.Tk
                            << " D " << c.D << " " << (dtype == torch::kFloat32 ? "float32" : "bfloat16");
    }
}

}  // namespace
