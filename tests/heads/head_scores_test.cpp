// Retrieval / long-range scores: the chunked computation against a direct one from full probabilities, and a
// hand-planted induction head.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/model_fixtures.h"
#include "rtp/core/error.h"
#include "rtp/heads/calibration.h"
#include "rtp/heads/head_scores.h"
#include "rtp/model/attention_seam.h"
#include "rtp/model/qwen3.h"

namespace {

using rtp::heads::LayerScoreSums;
using rtp::heads::ScoreOptions;
using rtp::heads::SpanLayout;

// The definitions of rtp/heads/head_scores.h, straight from [B, Hq, T, T] probabilities.
LayerScoreSums direct_sums(const torch::Tensor& probs, const std::vector<SpanLayout>& layouts, int64_t window,
                           int64_t sink) {
  const int64_t B = probs.size(0), Hq = probs.size(1), T = probs.size(2);
  auto p = probs.to(torch::kFloat64);
  LayerScoreSums s;
  s.copy = torch::zeros({Hq}, torch::kFloat64);
  s.induction = torch::zeros({Hq}, torch::kFloat64);
  s.long_range = torch::zeros({Hq}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& l = layouts[b];
    for (int64_t o = 0; o < l.length; ++o) {
      s.copy += p.index({b, torch::indexing::Slice(), l.second + o, l.first + o});
      s.induction += p.index({b, torch::indexing::Slice(), l.second + o, l.first + o + 1});
      ++s.retrieval_queries;
    }
    // far[i][j] = 1 for sink <= j <= i - window (rows i < window are all zero).
    auto far = torch::zeros({T, T}, torch::kFloat64);
    for (int64_t i = window; i < T; ++i) {
      for (int64_t j = sink; j <= i - window; ++j) far[i][j] = 1.0;
      ++s.long_range_queries;
    }
    s.long_range += (p[b] * far).sum({1, 2});
  }
  return s;
}

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const double err = (a - b).abs().max().item<double>();
  EXPECT_LE(err, tol) << what << ": chunked " << a << " direct " << b;
}

TEST(HeadScores, ChunkedMatchesDirectOnTinyQwen3) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  torch::manual_seed(3);
  const int64_t T = 70;
  auto ids = torch::randint(0, model.config().vocab_size, {2, T}, torch::kInt64);
  std::vector<SpanLayout> layouts = {{3, 50, 12}, {1, 20, 19}};
  for (int64_t b = 0; b < 2; ++b)  // plant the copies so that the scores are not all tiny
    for (int64_t o = 0; o < layouts[b].length; ++o) ids[b][layouts[b].second + o] = ids[b][layouts[b].first + o].item();
  int layers = 0;
  rtp::model::ForwardOptions fo;
  fo.observer = [&](const rtp::model::LayerAttentionInputs& in) {
    ++layers;
    auto probs = rtp::model::causal_attention_probs(in.q, in.k, in.scale);
    auto want = direct_sums(probs, layouts, /*window=*/9, /*sink=*/2);
    for (int64_t chunk : {1, 7, 128}) {
      ScoreOptions o;
      o.window = 9;
      o.sink = 2;
      o.chunk_rows = chunk;
      auto got = rtp::heads::layer_score_sums(in.q, in.k, in.scale, layouts, o);
      const std::string what = "layer " + std::to_string(in.layer) + " chunk " + std::to_string(chunk);
      expect_close(got.copy, want.copy, 1e-5, what + " copy");
      expect_close(got.induction, want.induction, 1e-5, what + " induction");
      expect_close(got.long_range, want.long_range, 1e-4, what + " long_range");
      EXPECT_EQ(got.retrieval_queries, want.retrieval_queries);
      EXPECT_EQ(got.long_range_queries, want.long_range_queries);
    }
  };
  torch::NoGradGuard ng;
  model.forward(ids, fo);
  EXPECT_EQ(layers, 3);
}

TEST(HeadScores, PlantedInductionHeadScoresOne) {
  // B=1, Hq=4, Hkv=2, D=T. KV head 0: one-hot keys k_j = e_j. Query head 1 (group of KV head 0) sends every
  // second-copy token at offset o to e_{first+o+1} with a large logit: a perfect induction head. Query head 0
  // (same KV head) has q = 0: uniform over its causal keys. KV head 1 and its query heads are random.
  const int64_t T = 40, D = T;
  const SpanLayout lay{3, 30, 8};
  torch::manual_seed(5);
  auto q = torch::zeros({1, 4, T, D});
  auto k = torch::zeros({1, 2, T, D});
  k[0][0] = torch::eye(T);
  k[0][1] = torch::randn({T, D}) * 0.1;
  q[0][2] = torch::randn({T, D}) * 0.1;
  q[0][3] = torch::randn({T, D}) * 0.1;
  for (int64_t o = 0; o < lay.length; ++o) q[0][1][lay.second + o][lay.first + o + 1] = 60.0;
  ScoreOptions opt;
  opt.window = 8;
  opt.sink = 1;
  opt.chunk_rows = 5;
  auto sums = rtp::heads::layer_score_sums(q, k, 1.0, {lay}, opt);
  rtp::heads::HeadScoreAccumulator acc(1, 4);
  acc.add(0, sums);
  auto s = acc.scores();
  EXPECT_GT(s.retrieval[1], 0.999);
  EXPECT_GT(s.induction[1], 0.999);
  EXPECT_LT(s.copy[1], 1e-3);
  for (int h : {0, 2, 3}) EXPECT_LT(s.retrieval[h], 0.15) << "head " << h;
  // Uniform head 0: query i puts (i - window - sink + 1) / (i + 1) on long-range keys [sink, i - window].
  double want = 0;
  for (int64_t i = opt.window; i < T; ++i) want += double(i - opt.window - opt.sink + 1) / double(i + 1);
  want /= double(T - opt.window);
  EXPECT_NEAR(s.long_range[0], want, 1e-5);
  // Its retrieval score is exact too: 2 / (i + 1) at each second-copy row i.
  double r0 = 0;
  for (int64_t o = 0; o < lay.length; ++o) r0 += 2.0 / double(lay.second + o + 1);
  EXPECT_NEAR(s.retrieval[0], r0 / lay.length, 1e-5);
}

TEST(HeadScores, BadInputsAreClearErrors) {
  auto q = torch::zeros({1, 4, 10, 8}), k = torch::zeros({1, 2, 10, 8});
  ScoreOptions o;
  o.window = 4;
  EXPECT_THROW(rtp::heads::layer_score_sums(q, k, 1.0, {{0, 5, 6}}, o), rtp::Error);  // second copy past T
  EXPECT_THROW(rtp::heads::layer_score_sums(q, k, 1.0, {}, o), rtp::Error);           // no layout
  EXPECT_THROW(rtp::heads::layer_score_sums(q, torch::zeros({1, 3, 10, 8}), 1.0, {{0, 5, 2}}, o), rtp::Error);
  rtp::heads::HeadScoreAccumulator acc(2, 4);
  acc.add(0, rtp::heads::layer_score_sums(q, k, 1.0, {{0, 5, 2}}, o));
  try {
    acc.scores();
    FAIL() << "layer 1 never scored";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
}

TEST(Calibration, SequencesHoldTheSpanTwiceAndAreDeterministic) {
  rtp::heads::CalibrationSpec spec;
  spec.vocab_size = 256;
  spec.num_sequences = 4;
  spec.seq_len = 128;
  spec.span_len = 16;
  spec.seed = 9;
  auto a = rtp::heads::make_calibration_sequences(spec);
  auto b = rtp::heads::make_calibration_sequences(spec);
  ASSERT_EQ(a.size(), 4u);
  for (size_t s = 0; s < a.size(); ++s) {
    EXPECT_EQ(a[s].ids, b[s].ids);
    const auto& l = a[s].layout;
    EXPECT_EQ(a[s].ids.size(), 128u);
    EXPECT_EQ(l.second, 128 - 16);
    EXPECT_GE(l.first, 1);
    EXPECT_LE(l.first + l.length, l.second);
    for (int64_t o = 0; o < l.length; ++o) EXPECT_EQ(a[s].ids[l.second + o], a[s].ids[l.first + o]);
    for (auto t : a[s].ids) EXPECT_TRUE(t >= 0 && t < 256);
  }
  EXPECT_NE(a[0].ids, a[1].ids);
  spec.seed = 10;
  EXPECT_NE(rtp::heads::make_calibration_sequences(spec)[0].ids, a[0].ids);
  spec.seq_len = 33;
  EXPECT_THROW(rtp::heads::make_calibration_sequences(spec), rtp::Error);
  spec.seq_len = 64;
  spec.source = "text";
  spec.text_tokens = {5, 6, 7};
  auto t = rtp::heads::make_calibration_sequences(spec);
  for (auto id : t[0].ids) EXPECT_TRUE(id >= 5 && id <= 7);
}

TEST(Calibration, ScoreModelHeadsRunsEveryLayer) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  rtp::heads::CalibrationSpec spec;
  spec.vocab_size = model.config().vocab_size;
  spec.num_sequences = 3;
  spec.seq_len = 64;
  spec.span_len = 8;
  auto seqs = rtp::heads::make_calibration_sequences(spec);
  ScoreOptions o;
  o.window = 16;
  int calls = 0;
  auto s = rtp::heads::score_model_heads(model, seqs, o, 2, [&](int64_t done, int64_t total) {
    ++calls;
    EXPECT_EQ(total, 3);
  });
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(s.num_layers, 3);
  EXPECT_EQ(s.retrieval.size(), 12u);
  for (size_t i = 0; i < s.retrieval.size(); ++i) {
    EXPECT_NEAR(s.retrieval[i], s.copy[i] + s.induction[i], 1e-6);
    EXPECT_TRUE(s.retrieval[i] >= 0 && s.retrieval[i] <= 1.0001);
    EXPECT_TRUE(s.long_range[i] >= 0 && s.long_range[i] <= 1.0001);
  }
  o.window = 64;
  EXPECT_THROW(rtp::heads::score_model_heads(model, seqs, o), rtp::Error);
}

}  // namespace
