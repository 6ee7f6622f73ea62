#pragma once
// Per-(layer, query head) scores for retrieval-head identification (DESIGN.md, "Heads" and "Identification").
//
// A calibration sequence holds a span S twice: [prefix | S (first copy) | filler | S (second copy)].
//   copy score       for a token of the second copy at offset o: attention mass on position first + o
//   induction score  the same on position first + o + 1 (the token that followed S[o] last time)
//   retrieval score  copy + induction (both are masses of one distribution, so the sum is <= 1)
//   long-range mass  for a query i >= window: mass on keys j with sink <= j <= i - window, i.e. exactly what a
//                    streaming head (sink first tokens + the last `window` keys, the query itself included) drops
// All are averaged over the queries they are defined for, then over sequences (every query weighs the same).
//
// Memory: scores are computed one KV head and `chunk_rows` query rows at a time, so at most
// group_size x chunk_rows x T fp32 probabilities live at once; no [T, T] matrix is ever formed.
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace rtp::heads {

struct SpanLayout {
  int64_t first = 0;   // position of the first copy's first token
  int64_t second = 0;  // position of the second copy's first token; first + length <= second, second + length <= T
  int64_t length = 0;
};

struct ScoreOptions {
  int64_t window = 1;       // keys i - j >= window are long-range for query i
  int64_t sink = 0;         // keys j < sink never count as long-range (a streaming head keeps them)
  int64_t chunk_rows = 128;  // query rows per probability block
};

// Sums (not means) over the queries of one layer call; float64 CPU tensors [Hq].
struct LayerScoreSums {
  torch::Tensor copy, induction, long_range;
  int64_t retrieval_queries = 0;   // (sequence, second-copy token) pairs summed into copy / induction
  int64_t long_range_queries = 0;  // (sequence, query i >= window) pairs summed into long_range
};

// q [B, Hq, T, D] and k [B, Hkv, T, D] after RoPE (what attention uses), `scale` as the model applies it;
// layouts.size() == B. Softmax over causal keys in fp32 on q's device.
LayerScoreSums layer_score_sums(const torch::Tensor& q, const torch::Tensor& k, double scale,
                                const std::vector<SpanLayout>& layouts, const ScoreOptions& options);

// Means per (layer, query head), row-major [num_layers, num_q_heads].
struct HeadScores {
  int64_t num_layers = 0, num_q_heads = 0;
  std::vector<float> retrieval, copy, induction, long_range;
  float at(const std::vector<float>& v, int64_t layer, int64_t head) const { return v[layer * num_q_heads + head]; }
};

class HeadScoreAccumulator {
 public:
  HeadScoreAccumulator(int64_t num_layers, int64_t num_q_heads);
  void add(int64_t layer, const LayerScoreSums& sums);
  // Throws if some layer never received a retrieval or long-range query (e.g. window >= seq_len).
  HeadScores scores() const;

 private:
  int64_t layers_, heads_;
  std::vector<double> copy_, induction_, long_range_;
  std::vector<int64_t> retrieval_n_, long_range_n_;
};

}  // namespace rtp::heads
