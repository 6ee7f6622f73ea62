// A prompt chunk's attention split in two (the keys before it unmasked, its own keys square causal) and merged by the
// parts' log-sum-exps, against the chunk's attention in one piece with the bottom-right causal mask, both in float64.
// The parts here are computed in float64 by explicit scores, independently of any kernel: what is tested is the split
// (which keys, which mask) and the merge (ops::attention_merge; its own cases: attention_merge_ref_test). cuDNN as the
// parts' kernel: dense_attention_gpu_test.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "rtp/core/error.h"
#include "rtp/model/attention_parts.h"

namespace {

using rtp::model::AttentionPart;
using rtp::model::LayerAttentionInputs;

// Queries [B, Hq, Tq, D] over keys [B, Hkv, Tk, D] (query head h reads KV head h / G) with mask(i, j) = key j visible
// to query i; float64 scores, their log-sum-exp and the softmax-weighted values.
AttentionPart float64_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                                const torch::Tensor& visible) {
  const int64_t G = q.size(1) / k.size(1);
  const auto kk = k.to(torch::kFloat64).repeat_interleave(G, 1), vv = v.to(torch::kFloat64).repeat_interleave(G, 1);
  auto scores = torch::matmul(q.to(torch::kFloat64), kk.transpose(-1, -2)) * scale;
  scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<double>::infinity());
  const auto lse = torch::logsumexp(scores, -1);
  return {torch::matmul(torch::exp(scores - lse.unsqueeze(-1)), vv), lse};
}

// visible(i, j) = j <= i + offset for an [n, m] block.
torch::Tensor causal_visible(int64_t n, int64_t m, int64_t offset) {
  return torch::arange(m).unsqueeze(0) <= torch::arange(n).unsqueeze(1) + offset;
}

TEST(AttentionParts, ChunkInTwoEqualsTheBottomRightCausalChunk) {
  torch::manual_seed(5);
  struct Case {
    int64_t B, Hq, Hkv, Tq, Tk, D;
  };
  for (const auto& c : {Case{1, 4, 1, 7, 8, 16}, Case{2, 6, 2, 13, 100, 24}, Case{1, 8, 8, 64, 65, 32},
                        Case{1, 4, 2, 1, 37, 8}, Case{2, 2, 1, 33, 1000, 16}}) {
    LayerAttentionInputs in;
    in.q = torch::randn({c.B, c.Hq, c.Tq, c.D}, torch::kFloat64);
    // A cache's strided view: [B, Hkv, capacity, D] narrowed to Tk positions.
    in.k = torch::randn({c.B, c.Hkv, c.Tk + 9, c.D}, torch::kFloat64).narrow(2, 0, c.Tk);
    in.v = torch::randn({c.B, c.Hkv, c.Tk + 9, c.D}, torch::kFloat64).narrow(2, 0, c.Tk);
    in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const auto whole = float64_attention(in.q, in.k, in.v, in.scale, causal_visible(c.Tq, c.Tk, c.Tk - c.Tq)).out;
    int calls = 0;
    const auto part = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
                          double scale) {
      ++calls;
      // The earlier keys are all visible; the chunk's own keys are a square causal block.
      EXPECT_EQ(k.size(2), causal ? c.Tq : c.Tk - c.Tq);
      const auto visible = causal ? causal_visible(q.size(2), k.size(2), 0)
                                  : torch::ones({q.size(2), k.size(2)}, torch::kBool);
      return float64_attention(q, k, v, scale, visible);
    };
    const auto got = rtp::model::chunk_attention_in_two(in, part);
    EXPECT_EQ(calls, 2);
    ASSERT_EQ(got.sizes(), whole.sizes());
    EXPECT_EQ(got.scalar_type(), torch::kFloat64);
    // The merge runs in float32: its rounding, not the split, is the difference.
    EXPECT_LE((got - whole).abs().max().item<double>(), 1e-5)
        << "B " << c.B << " Hq " << c.Hq << " Hkv " << c.Hkv << " Tq " << c.Tq << " Tk " << c.Tk;
  }
}

TEST(AttentionParts, AChunkWithNoEarlierKeysIsAnErrorThatSaysWhatWasFound) {
  LayerAttentionInputs in;
  in.q = torch::zeros({1, 2, 4, 4});
  in.k = in.v = torch::zeros({1, 2, 4, 4});  // no keys before the chunk: nothing to split
  const auto never = [](const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, bool, double) -> AttentionPart {
    ADD_FAILURE() << "no part should run";
    return {};
  };
  try {
    rtp::model::chunk_attention_in_two(in, never);
    ADD_FAILURE() << "expected an error";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 queries over 4 keys"), std::string::npos) << e.what();
  }
}

}  // namespace
