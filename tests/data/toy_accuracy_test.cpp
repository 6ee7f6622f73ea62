#include <gtest/gtest.h>
#include <torch/torch.h>

#include "rtp/data/toy_task.h"
#include "rtp/model/attention_seam.h"
#include "rtp/model/qwen3.h"

using namespace rtp;

namespace {

model::ModelConfig tiny_model() {
  model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  return c;
}

data::ToyTaskConfig tiny_task() {
  data::ToyTaskConfig t;
  t.vocab_size = 64;
  t.num_filler = 24;
  t.num_keys = 16;
  t.num_values = 16;
  t.value_len = 2;
  t.num_needles = 3;
  t.num_queries = 2;
  t.num_spans = 1;
  t.span_len = 4;
  return t;
}

// Dense attention that counts its calls: proves toy_accuracy routes through the seam it is given.
struct CountingDense : model::AttentionSeam {
  int calls = 0;
  model::DenseAttention dense;
  torch::Tensor attend(const model::LayerAttentionInputs& in) override {
    ++calls;
    return dense.attend(in);
  }
};

// A seam that attends only to the current token: no retrieval is possible through it.
struct SelfOnly : model::AttentionSeam {
  torch::Tensor attend(const model::LayerAttentionInputs& in) override {
    const int64_t g = in.q.size(1) / in.v.size(1);
    return in.v.repeat_interleave(g, 1);
  }
};

}  // namespace

TEST(ToyAccuracy, CountsQueriesAndUsesTheSeam) {
  model::Qwen3Model m(tiny_model());
  m.init_random(3);
  data::ToyTask task(tiny_task());
  const auto samples = task.generate_many(64, 5, 1, 0, 5);
  const auto dense = data::toy_accuracy(m, samples, {}, 2);
  EXPECT_EQ(dense.queries, 10);
  EXPECT_EQ(dense.answer_tokens, 20);
  EXPECT_LE(dense.correct, dense.queries);
  CountingDense counting;
  model::ForwardOptions o;
  o.attention = &counting;
  const auto via_seam = data::toy_accuracy(m, samples, o, 2);
  EXPECT_EQ(counting.calls, 3 * 2);  // 3 batches (2 + 2 + 1) x 2 layers
  EXPECT_EQ(via_seam.correct, dense.correct);
  EXPECT_EQ(via_seam.correct_tokens, dense.correct_tokens);
  SelfOnly self_only;
  o.attention = &self_only;
  EXPECT_EQ(data::toy_accuracy(m, samples, o, 8).queries, 10);
}

TEST(ToyAccuracy, ExactMatchNeedsEveryAnswerToken) {
  // A "copy" model: attention and MLP outputs zeroed, LM head = embedding, so it predicts the current token
  // (random 32-dim embeddings: e_t . e_t dominates). At a query it is right on answer token i only when value
  // token i equals the previous token, and never on v1 (which follows ANS), so no query is an exact match.
  model::ModelConfig c = tiny_model();
  c.tie_word_embeddings = true;
  model::Qwen3Model m(c);
  m.init_random(3, 1.0);
  {
    torch::NoGradGuard ng;
    for (auto& [n, p] : m.named_parameters())
      if (n.find("o_proj") != std::string::npos || n.find("down_proj") != std::string::npos) p.zero_();
  }
  data::ToyTask task(tiny_task());
  const auto samples = task.generate_many(64, 5, 1, 0, 40);
  const auto pred = m.forward(data::stack_ids(samples)).argmax(-1);
  ASSERT_TRUE(torch::equal(pred, data::stack_ids(samples)));  // it is a copy model
  const auto acc = data::toy_accuracy(m, samples);
  int64_t expect_tokens = 0;
  for (const auto& s : samples)
    for (int64_t p : s.answer_positions) expect_tokens += s.ids[p] == s.ids[p + 1];
  EXPECT_GT(expect_tokens, 0);  // values repeat a token sometimes (16 value ids)
  EXPECT_EQ(acc.correct_tokens, expect_tokens);
  EXPECT_EQ(acc.correct, 0);
  EXPECT_EQ(acc.queries, 80);

  // Every other query rewritten so that each of its answer tokens repeats the token before the answer: the copy
  // model gets all of them, so exactly those queries count as correct, and every one of their tokens.
  auto edited = samples;
  const int64_t value_len = tiny_task().value_len;
  int64_t rewritten = 0, tokens = 0;
  for (auto& s : edited) {
    for (size_t q = 0; q < s.queries.size(); q += 2, ++rewritten) {
      const int64_t a = s.queries[q].ans_position;
      for (int64_t i = 0; i < value_len; ++i) s.ids[static_cast<size_t>(a + 1 + i)] = s.ids[static_cast<size_t>(a)];
    }
    for (int64_t p : s.answer_positions) tokens += s.ids[p] == s.ids[p + 1];
  }
  ASSERT_TRUE(torch::equal(m.forward(data::stack_ids(edited)).argmax(-1), data::stack_ids(edited)));
  const auto acc2 = data::toy_accuracy(m, edited);
  EXPECT_EQ(rewritten, 40);
  EXPECT_EQ(acc2.correct, rewritten);
  EXPECT_EQ(acc2.correct_tokens, tokens);
  EXPECT_GE(tokens, rewritten * value_len);
}
