#include "rtp/heads/head_scores.h"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "rtp/core/error.h"

namespace rtp::heads {

using torch::indexing::Slice;

LayerScoreSums layer_score_sums(const torch::Tensor& q, const torch::Tensor& k, double scale,
                                const std::vector<SpanLayout>& layouts, const ScoreOptions& options) {
  RTP_CHECK(q.dim() == 4 && k.dim() == 4, "layer_score_sums: expected q [B, Hq, T, D] and k [B, Hkv, T, D], found ",
            q.sizes(), " and ", k.sizes());
  const int64_t B = q.size(0), Hq = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1);
  RTP_CHECK(k.size(0) == B && k.size(2) == T && k.size(3) == D && Hkv > 0 && Hq % Hkv == 0,
            "layer_score_sums: q ", q.sizes(), " and k ", k.sizes(), " do not fit (same B, T, D; Hq a multiple of Hkv)");
  RTP_CHECK(static_cast<int64_t>(layouts.size()) == B, "layer_score_sums: ", layouts.size(),
            " span layouts for a batch of ", B);
  RTP_CHECK(options.window >= 1 && options.sink >= 0 && options.chunk_rows >= 1,
            "layer_score_sums: need window >= 1, sink >= 0, chunk_rows >= 1; found window ", options.window, ", sink ",
            options.sink, ", chunk_rows ", options.chunk_rows);
  for (const auto& l : layouts)
    RTP_CHECK(l.length >= 1 && l.first >= 0 && l.first + l.length <= l.second && l.second + l.length <= T,
              "layer_score_sums: span layout (first ", l.first, ", second ", l.second, ", length ", l.length,
              ") does not fit a sequence of ", T, " tokens (need first + length <= second, second + length <= T)");
  const int64_t G = Hq / Hkv;
  const auto dev = q.device();
  const auto i64 = torch::TensorOptions(torch::kInt64).device(dev);

  auto copy = torch::zeros({Hq}, torch::TensorOptions(torch::kFloat64).device(dev));
  auto induction = torch::zeros_like(copy);
  auto long_range = torch::zeros_like(copy);
  LayerScoreSums out;

  for (int64_t b = 0; b < B; ++b) {
    const SpanLayout& lay = layouts[b];
    // Only rows that some score is defined for: the second copy and every query at or past the window.
    const int64_t row_begin = std::min(lay.second, options.window);
    if (row_begin >= T) continue;
    out.retrieval_queries += lay.length;
    out.long_range_queries += std::max<int64_t>(0, T - options.window);
    for (int64_t r0 = row_begin; r0 < T; r0 += options.chunk_rows) {
      const int64_t r1 = std::min(T, r0 + options.chunk_rows);
      auto rows = torch::arange(r0, r1, i64).unsqueeze(1);  // [C, 1] absolute query positions
      auto cols = torch::arange(0, r1, i64).unsqueeze(0);   // [1, r1] keys a causal query of this chunk can see
      auto future = cols > rows;                            // [C, r1]
      // Long-range keys: sink <= j <= i - window (empty for rows i < window).
      auto far = ((cols >= options.sink) & (cols <= rows - options.window)).to(torch::kFloat32);
      // Second-copy rows of this chunk and the first-copy columns they are scored on.
      const int64_t s0 = std::max(r0, lay.second), s1 = std::min(r1, lay.second + lay.length);
      torch::Tensor srows, mcols;
      if (s0 < s1) {
        srows = torch::arange(s0 - r0, s1 - r0, i64);
        mcols = torch::arange(s0 - lay.second + lay.first, s1 - lay.second + lay.first, i64);
      }
      for (int64_t g = 0; g < Hkv; ++g) {
        auto qc = q.index({b, Slice(g * G, (g + 1) * G), Slice(r0, r1)}).to(torch::kFloat32);  // [G, C, D]
        auto kc = k.index({b, g, Slice(0, r1)}).to(torch::kFloat32);                         // [r1, D]
        auto logits = torch::matmul(qc, kc.t()) * scale;                                       // [G, C, r1]
        logits.masked_fill_(future, -std::numeric_limits<float>::infinity());
        auto p = torch::softmax(logits, -1);
        long_range.narrow(0, g * G, G).add_((p * far).sum({1, 2}).to(torch::kFloat64));
        if (s0 < s1) {
          auto ps = p.index_select(1, srows);  // [G, n, r1]
          copy.narrow(0, g * G, G).add_(ps.gather(2, mcols.view({1, -1, 1}).expand({G, -1, 1})).sum({1, 2}).to(torch::kFloat64));
          induction.narrow(0, g * G, G)
              .add_(ps.gather(2, (mcols + 1).view({1, -1, 1}).expand({G, -1, 1})).sum({1, 2}).to(torch::kFloat64));
        }
      }
    }
  }
  out.copy = copy.cpu();
  out.induction = induction.cpu();
  out.long_range = long_range.cpu();
  return out;
}

HeadScoreAccumulator::HeadScoreAccumulator(int64_t num_layers, int64_t num_q_heads)
    : layers_(num_layers),
      heads_(num_q_heads),
      copy_(num_layers * num_q_heads, 0.0),
      induction_(num_layers * num_q_heads, 0.0),
      long_range_(num_layers * num_q_heads, 0.0),
      retrieval_n_(num_layers, 0),
      long_range_n_(num_layers, 0) {
  RTP_CHECK(num_layers > 0 && num_q_heads > 0, "HeadScoreAccumulator: need positive sizes, found ", num_layers,
            " layers, ", num_q_heads, " query heads");
}

void HeadScoreAccumulator::add(int64_t layer, const LayerScoreSums& sums) {
  RTP_CHECK(layer >= 0 && layer < layers_, "HeadScoreAccumulator: layer ", layer, " outside [0, ", layers_, ")");
  RTP_CHECK(sums.copy.numel() == heads_ && sums.induction.numel() == heads_ && sums.long_range.numel() == heads_,
            "HeadScoreAccumulator: expected ", heads_, " query heads, found ", sums.copy.numel());
  auto c = sums.copy.to(torch::kFloat64).contiguous(), n = sums.induction.to(torch::kFloat64).contiguous(),
       r = sums.long_range.to(torch::kFloat64).contiguous();
  for (int64_t h = 0; h < heads_; ++h) {
    copy_[layer * heads_ + h] += c.data_ptr<double>()[h];
    induction_[layer * heads_ + h] += n.data_ptr<double>()[h];
    long_range_[layer * heads_ + h] += r.data_ptr<double>()[h];
  }
  retrieval_n_[layer] += sums.retrieval_queries;
  long_range_n_[layer] += sums.long_range_queries;
}

HeadScores HeadScoreAccumulator::scores() const {
  HeadScores s;
  s.num_layers = layers_;
  s.num_q_heads = heads_;
  const size_t n = static_cast<size_t>(layers_ * heads_);
  s.retrieval.resize(n);
  s.copy.resize(n);
  s.induction.resize(n);
  s.long_range.resize(n);
  for (int64_t l = 0; l < layers_; ++l) {
    RTP_CHECK(retrieval_n_[l] > 0, "no retrieval queries were scored for layer ", l,
              " (no calibration sequence reached it?)");
    RTP_CHECK(long_range_n_[l] > 0, "no query of layer ", l,
              " lies past the window: the window must be shorter than the sequence");
    for (int64_t h = 0; h < heads_; ++h) {
      const size_t i = static_cast<size_t>(l * heads_ + h);
      s.copy[i] = static_cast<float>(copy_[i] / retrieval_n_[l]);
      s.induction[i] = static_cast<float>(induction_[i] / retrieval_n_[l]);
      s.retrieval[i] = static_cast<float>((copy_[i] + induction_[i]) / retrieval_n_[l]);
      s.long_range[i] = static_cast<float>(long_range_[i] / long_range_n_[l]);
    }
  }
  return s;
}

}  // namespace rtp::heads
