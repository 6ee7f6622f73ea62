#pragma once
// The toy model's synthetic long-context task: key-value needles in a haystack with local structure, spans
// repeated verbatim later (induction), and queries at the end whose answers are the needles' values.
//
// Vocabulary (ids), for the default sizes (vocab 512):
//   0 PAD  1 BOS  2 KEY  3 VAL  4 QUERY  5 ANS  6 SEP  7 EOS          (kNumSpecial = 8)
//   [8, 8+F)            filler tokens (the haystack's Markov chain)
//   [8+F, 8+F+K)        key tokens
//   [8+F+K, 8+F+K+V)    value tokens
// A sequence of length T (exactly):
//   BOS  haystack(filler, with N needles "KEY k1..kK VAL v1..vV" at random depths and S spans copied verbatim
//        later in the filler)  then M queries "QUERY k1..kK ANS v1..vV" asking for distinct needles.
// Answer tokens are the value tokens of the queries: from the position of ANS the model must predict v1 (real
// retrieval: v1 depends only on which needle carries the key), from v1 it predicts v2, and so on.
//
// Determinism: a sample is a pure function of (task config, sample seed). The haystack's transition table is a
// pure function of world_seed, so every sequence of a task shares the same local structure. Sample seeds are
// derived by sample_seed(seed, stream, index) (SplitMix64), so that the training stream, evaluation stream and
// a resumed run all see exactly the same sequences. The PRNG is std::mt19937_64 (identical on every platform);
// random integers in [0, n) are drawn as floor(u * n) with u from the 53 top bits, not with
// std::uniform_int_distribution (whose algorithm differs between standard libraries).
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "rtp/model/qwen3.h"

namespace rtp::data {

enum ToySpecial : int64_t { kPad = 0, kBos = 1, kKey = 2, kVal = 3, kQuery = 4, kAns = 5, kSep = 6, kEos = 7 };
constexpr int64_t kNumSpecial = 8;

struct ToyTaskConfig {
  int64_t vocab_size = 512;  // must be >= kNumSpecial + num_filler + num_keys + num_values
  int64_t num_filler = 248;
  int64_t num_keys = 128;
  int64_t num_values = 128;
  int64_t key_len = 2;
  int64_t value_len = 3;
  int64_t num_needles = 16;
  int64_t num_queries = 8;  // <= num_needles: every query asks a different needle
  int64_t num_spans = 2;
  int64_t span_len = 32;
  int64_t markov_branching = 4;  // successors per filler token in the haystack's Markov chain; 0: i.i.d. uniform
  // The filler token at i is drawn from the successors of the one at i - markov_lag. With lag 2 the haystack can
  // only be predicted by looking one token back, so a previous-token head pays off from the first steps; it is
  // the first half of the induction circuit that answers queries, which otherwise has no reason to form early.
  int64_t markov_lag = 1;
  // Spans of uniformly random tokens (filler, values, and keys no needle of the sample uses) instead of haystack
  // pieces. A copy of a random span can only be predicted by induction (find the earlier occurrence of the
  // current token, copy what followed it): a dense signal for the circuit that answers queries, which the sparse
  // queries alone give too weakly to learn in a few thousand steps. Needle keys stay out so that a query's key
  // occurs exactly once before it.
  bool random_spans = false;
  // Layout of needles and queries. false: "KEY k.. VAL v.." / "QUERY k.. ANS v..". true: "KEY VAL k.. v.." /
  // "QUERY ANS k.. v..": the value follows its key directly, so one induction step (find the earlier copy of
  // the key, copy what followed it) answers a query. Same lengths either way.
  bool adjacent = false;
  uint64_t world_seed = 7;

  int64_t filler_begin() const { return kNumSpecial; }
  int64_t key_begin() const { return kNumSpecial + num_filler; }
  int64_t value_begin() const { return kNumSpecial + num_filler + num_keys; }
  int64_t needle_len() const { return key_len + value_len + 2; }  // KEY k.. VAL v..
  int64_t query_len() const { return key_len + value_len + 2; }   // QUERY k.. ANS v..
  // The shortest sequence that holds everything (with room for the spans and some filler).
  int64_t min_seq_len() const;
  // Throws rtp::Error naming the offending fields (using `origin` and the TrainConfig key names toy_*).
  void validate(const std::string& origin) const;
};

struct ToyNeedle {
  int64_t position = 0;  // of its KEY token
  std::vector<int64_t> key, value;
};
struct ToyQuery {
  int64_t position = 0;  // of its QUERY token
  int64_t needle = 0;    // index into ToySample::needles
  int64_t ans_position = 0;  // predicts the first answer token: ANS (or the last key token when adjacent);
                             // answer token i is ids[ans_position + 1 + i]
};
struct ToySpan {
  int64_t source = 0, copy = 0, length = 0;  // ids[copy + i] == ids[source + i] for i < length
};

struct ToySample {
  std::vector<int64_t> ids;  // exactly seq_len tokens, ids[0] == BOS
  // Positions p at which ids[p + 1] is an answer token to predict from position p (value_len per query,
  // grouped by query in query order).
  std::vector<int64_t> answer_positions;
  std::vector<ToyNeedle> needles;  // in order of position
  std::vector<ToyQuery> queries;   // in order of position
  std::vector<ToySpan> spans;
};

// SplitMix64 of (seed, stream, index): independent seeds for sample `index` of stream `stream`
// (streams used by the trainer: 0 training, 1 evaluation).
uint64_t sample_seed(uint64_t seed, uint64_t stream, uint64_t index);

class ToyTask {
 public:
  explicit ToyTask(const ToyTaskConfig& config);  // validates, builds the transition table from world_seed
  const ToyTaskConfig& config() const { return config_; }

  ToySample generate(int64_t seq_len, uint64_t seed) const;
  // Samples index, index+1, ... of a stream: generate(seq_len, sample_seed(seed, stream, index + i)).
  std::vector<ToySample> generate_many(int64_t seq_len, uint64_t seed, uint64_t stream, uint64_t index,
                                       int64_t count) const;

  // The filler chain: successors(t) are the `markov_branching` possible next tokens of filler token t, with
  // cumulative probabilities successor_cdf(t).
  const std::vector<int64_t>& successors(int64_t filler_token) const;
  const std::vector<double>& successor_cdf(int64_t filler_token) const;

  std::string describe() const;  // one line, for logs

 private:
  ToyTaskConfig config_;
  std::vector<std::vector<int64_t>> next_;
  std::vector<std::vector<double>> cdf_;
};

// A training batch. Loss convention (documented here because the trainer and the tests both rely on it):
// every next token is a target (targets[b, t] = ids[b, t + 1]; the last position has target -100, ignored);
// answer targets weigh `answer_loss_weight`, every other target weighs 1; loss = sum(w * CE) / sum(w).
// Answer tokens are a tiny fraction of the tokens (24 of 1024 by default), so without the weight the gradient
// is dominated by the haystack's Markov chain and retrieval is learned late.
struct ToyBatch {
  torch::Tensor input_ids;     // int64 [B, T]
  torch::Tensor targets;       // int64 [B, T], -100 where there is no target
  torch::Tensor loss_weights;  // float32 [B, T], 0 where there is no target
  torch::Tensor answer_mask;   // bool [B, T]: position predicts an answer token
  torch::Tensor copy_mask;     // bool [B, T]: position predicts a token of a span copy from the token before it
                               // (only induction can: the copy's first token is not included)
};
// All samples must have the same length.
ToyBatch make_batch(const std::vector<ToySample>& samples, double answer_loss_weight = 1.0);
// int64 [B, T] of the samples' ids.
torch::Tensor stack_ids(const std::vector<ToySample>& samples);
// Weighted mean cross-entropy of logits [B, T, V] against the batch (float32 scalar), as documented above.
torch::Tensor weighted_lm_loss(const torch::Tensor& logits, const ToyBatch& batch);

struct ToyAccuracy {
  int64_t queries = 0;
  int64_t correct = 0;           // queries whose every answer token is the argmax (exact match)
  int64_t answer_tokens = 0;
  int64_t correct_tokens = 0;
  double accuracy() const { return queries ? static_cast<double>(correct) / static_cast<double>(queries) : 0.0; }
  double token_accuracy() const {
    return answer_tokens ? static_cast<double>(correct_tokens) / static_cast<double>(answer_tokens) : 0.0;
  }
};

// Teacher-forced exact match: a query counts as correct when, at every one of its answer positions, the argmax
// of the logits is the answer token. Runs in no-grad mode, `batch_size` sequences at a time (samples of equal
// length are batched; `options` passes an AttentionSeam for sparse evaluation, nullptr: dense).
ToyAccuracy toy_accuracy(model::Qwen3Model& model, const std::vector<ToySample>& samples,
                         const model::ForwardOptions& options = {}, int64_t batch_size = 8);

}  // namespace rtp::data
