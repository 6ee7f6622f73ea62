// A dense prompt chunk's attention on the GPU, bfloat16: its queries the last Tq of Tk keys of a strided cache view,
// GQA. Both ways DenseAttention takes it (ChunkAttention::SplitCudnn: two cuDNN parts merged; Flash: FlashAttention-2's
// bottom-right mask) against float64 on the host, within twice the error of a naive bfloat16 attention; and cuDNN's
// parts through chunk_attention_in_two directly, so the split is tested where DenseAttention would fall back.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "rtp/model/attention_parts.h"
#include "rtp/model/attention_seam.h"

namespace {

using rtp::model::ChunkAttention;
using rtp::model::DenseAttention;
using rtp::model::LayerAttentionInputs;

// Bottom-right causal attention of q over k, v with scores, softmax and the weighted sum in `dtype` arithmetic on the
// host (float64: the reference; bfloat16 matrix products with float32 softmax, rounded between: the naive version).
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                        torch::ScalarType dtype) {
  const int64_t G = q.size(1) / k.size(1), tq = q.size(2), tk = k.size(2);
  const auto qq = q.cpu().to(dtype), kk = k.cpu().to(dtype).repeat_interleave(G, 1), vv = v.cpu().to(dtype).repeat_interleave(G, 1);
  const auto visible = torch::arange(tk).unsqueeze(0) <= torch::arange(tq).unsqueeze(1) + (tk - tq);
  auto scores = (torch::matmul(qq, kk.transpose(-1, -2)).to(torch::kFloat64) * scale)
                    .masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
  const auto p = torch::softmax(scores, -1).to(dtype);
  return torch::matmul(p, vv).to(torch::kFloat64);
}

TEST(DenseAttentionGpu, ChunksBothWaysWithinTwiceTheNaiveBfloat16Error) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GPU chunk attention is tested on the GPU machine";
  torch::manual_seed(3);
  struct Case {
    int64_t B, Hq, Hkv, Tq, Tk, D;
  };
  // Qwen3-30B-A3B's heads (32 / 4 of 128), an odd chunk over odd key counts, G 1 with D 64, a batch of 2. Chunks of
  // 512 queries or more take cuDNN's parts under SplitCudnn; 300 queries stay on FlashAttention either way.
  for (const auto& c : {Case{1, 32, 4, 512, 2500, 128}, Case{1, 16, 2, 777, 2049, 128}, Case{1, 8, 8, 512, 1537, 64},
                        Case{2, 8, 2, 600, 1801, 128}, Case{1, 16, 4, 300, 1000, 128}}) {
    const auto opt = torch::TensorOptions(torch::kBFloat16).device(torch::kCUDA);
    LayerAttentionInputs in;
    // q as the model makes it ([B, T, Hq, D] transposed), k and v views of a longer cache.
    in.q = torch::randn({c.B, c.Tq, c.Hq, c.D}, opt).transpose(1, 2);
    in.k = torch::randn({c.B, c.Hkv, c.Tk + 100, c.D}, opt).narrow(2, 0, c.Tk);
    in.v = torch::randn({c.B, c.Hkv, c.Tk + 100, c.D}, opt).narrow(2, 0, c.Tk);
    in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const auto expected = attention(in.q, in.k, in.v, in.scale, torch::kFloat64);
    const double naive = (attention(in.q, in.k, in.v, in.scale, torch::kBFloat16) - expected).abs().max().item<double>();
    const auto err = [&](const torch::Tensor& got) {
      EXPECT_EQ(got.sizes(), expected.sizes());
      EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
      return (got.cpu().to(torch::kFloat64) - expected).abs().max().item<double>();
    };
    const double split = err(DenseAttention(ChunkAttention::SplitCudnn).attend(in));
    const double flash = err(DenseAttention(ChunkAttention::Flash).attend(in));
    const double cudnn_parts = err(rtp::model::chunk_attention_in_two(
        in, [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal, double scale) {
          auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, std::nullopt, true, 0.0, causal, false, scale);
          return rtp::model::AttentionPart{std::get<0>(r), std::get<1>(r)};
        }));
    const std::string at = "B " + std::to_string(c.B) + " Hq " + std::to_string(c.Hq) + " Hkv " + std::to_string(c.Hkv) +
                           " Tq " + std::to_string(c.Tq) + " Tk " + std::to_string(c.Tk) + " D " + std::to_string(c.D);
    EXPECT_LE(split, 2 * naive) << at << ": naive bf16 " << naive;
    EXPECT_LE(flash, 2 * naive) << at << ": naive bf16 " << naive;
    EXPECT_LE(cudnn_parts, 2 * naive) << at << ": naive bf16 " << naive;
    std::printf("%s: max |error| split-cudnn %.3g, flash %.3g, cuDNN parts %.3g, naive bf16 %.3g\n", at.c_str(), split,
                flash, cudnn_parts, naive);
  }
}

}  // namespace
