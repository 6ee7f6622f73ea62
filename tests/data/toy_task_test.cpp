#include "rtp/data/toy_task.h"

#include <gtest/gtest.h>

#include <cmath>
#include <torch/torch.h>

#include <set>

#include "rtp/core/error.h"

using namespace rtp::data;

namespace {
ToyTaskConfig small_config() {
  ToyTaskConfig c;  // defaults: vocab 512, 16 needles, 8 queries, 2 spans of 32
  return c;
}
}  // namespace

TEST(ToyTask, SameSeedSameIdsDifferentSeedDifferentIds) {
  ToyTask task(small_config());
  const auto a = task.generate(1024, 42);
  const auto b = task.generate(1024, 42);
  const auto c = task.generate(1024, 43);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.answer_positions, b.answer_positions);
  EXPECT_NE(a.ids, c.ids);
  // A second task object with the same world seed shares the chain; a different world seed does not.
  ToyTask same(small_config());
  EXPECT_EQ(same.generate(1024, 42).ids, a.ids);
  ToyTaskConfig other = small_config();
  other.world_seed = 8;
  EXPECT_NE(ToyTask(other).generate(1024, 42).ids, a.ids);
}

TEST(ToyTask, SampleSeedsAreStreamsAndIndices) {
  EXPECT_EQ(sample_seed(1, 0, 5), sample_seed(1, 0, 5));
  EXPECT_NE(sample_seed(1, 0, 5), sample_seed(1, 0, 6));
  EXPECT_NE(sample_seed(1, 0, 5), sample_seed(1, 1, 5));
  EXPECT_NE(sample_seed(1, 0, 5), sample_seed(2, 0, 5));
  ToyTask task(small_config());
  const auto many = task.generate_many(512, 9, 0, 10, 3);
  ASSERT_EQ(many.size(), 3u);
  EXPECT_EQ(many[2].ids, task.generate(512, sample_seed(9, 0, 12)).ids);
}

TEST(ToyTask, StructureIsValid) {
  const ToyTaskConfig cfg = small_config();
  ToyTask task(cfg);
  for (int64_t T : {cfg.min_seq_len(), int64_t{400}, int64_t{1024}, int64_t{4096}}) {
    for (uint64_t seed = 0; seed < 20; ++seed) {
      const auto s = task.generate(T, seed);
      ASSERT_EQ(static_cast<int64_t>(s.ids.size()), T);
      EXPECT_EQ(s.ids[0], kBos);
      for (int64_t id : s.ids) ASSERT_TRUE(id >= 0 && id < cfg.vocab_size);
      // Needles: KEY key VAL value at their positions; distinct keys.
      ASSERT_EQ(static_cast<int64_t>(s.needles.size()), cfg.num_needles);
      std::set<std::vector<int64_t>> keys;
      for (const auto& n : s.needles) {
        EXPECT_TRUE(keys.insert(n.key).second);
        ASSERT_EQ(s.ids[n.position], kKey);
        for (int64_t i = 0; i < cfg.key_len; ++i) {
          EXPECT_EQ(s.ids[n.position + 1 + i], n.key[i]);
          EXPECT_GE(n.key[i], cfg.key_begin());
          EXPECT_LT(n.key[i], cfg.value_begin());
        }
        ASSERT_EQ(s.ids[n.position + 1 + cfg.key_len], kVal);
        for (int64_t i = 0; i < cfg.value_len; ++i) {
          EXPECT_EQ(s.ids[n.position + 2 + cfg.key_len + i], n.value[i]);
          EXPECT_GE(n.value[i], cfg.value_begin());
        }
      }
      // Keys and special tokens appear only where the structure puts them.
      int64_t n_key_tokens = 0;
      for (int64_t id : s.ids) n_key_tokens += id == kKey;
      EXPECT_EQ(n_key_tokens, cfg.num_needles);
      // Queries: the last M * query_len tokens; distinct needles; answers equal the needle's value.
      ASSERT_EQ(static_cast<int64_t>(s.queries.size()), cfg.num_queries);
      EXPECT_EQ(s.queries.front().position, T - cfg.num_queries * cfg.query_len());
      std::set<int64_t> asked;
      size_t ap = 0;
      for (const auto& q : s.queries) {
        EXPECT_TRUE(asked.insert(q.needle).second);
        const auto& n = s.needles[q.needle];
        ASSERT_EQ(s.ids[q.position], kQuery);
        for (int64_t i = 0; i < cfg.key_len; ++i) EXPECT_EQ(s.ids[q.position + 1 + i], n.key[i]);
        ASSERT_EQ(q.ans_position, q.position + 1 + cfg.key_len);
        ASSERT_EQ(s.ids[q.ans_position], kAns);
        for (int64_t i = 0; i < cfg.value_len; ++i) {
          ASSERT_LT(ap, s.answer_positions.size());
          const int64_t p = s.answer_positions[ap++];
          EXPECT_EQ(p, q.ans_position + i);
          EXPECT_EQ(s.ids[p + 1], n.value[i]);  // position p predicts answer token i
        }
      }
      EXPECT_EQ(ap, s.answer_positions.size());
      // Spans: copies equal their sources, lie in the haystack, contain only filler.
      for (const auto& sp : s.spans) {
        EXPECT_GE(sp.copy, sp.source + sp.length);
        for (int64_t i = 0; i < sp.length; ++i) {
          EXPECT_EQ(s.ids[sp.copy + i], s.ids[sp.source + i]);
          EXPECT_GE(s.ids[sp.source + i], cfg.filler_begin());
          EXPECT_LT(s.ids[sp.source + i], cfg.key_begin());
        }
      }
      // Spans are laid out before the needles, so every span always finds room.
      EXPECT_EQ(static_cast<int64_t>(s.spans.size()), cfg.num_spans);
    }
  }
}

TEST(ToyTask, HaystackFollowsTheMarkovChain) {
  ToyTask task(small_config());
  const auto s = task.generate(2048, 3);
  int64_t checked = 0;
  std::set<int64_t> span_edges;
  for (const auto& sp : s.spans) span_edges.insert({sp.copy, sp.copy + sp.length});
  for (size_t i = 1; i + 1 < s.ids.size(); ++i) {
    const int64_t a = s.ids[i], b = s.ids[i + 1];
    const auto& c = task.config();
    const bool filler = a >= c.filler_begin() && a < c.key_begin() && b >= c.filler_begin() && b < c.key_begin();
    if (!filler || span_edges.count(static_cast<int64_t>(i + 1))) continue;
    const auto& next = task.successors(a);
    // Transitions inside filler runs follow the chain (needle insertions break runs, never chain edges).
    bool ok = std::find(next.begin(), next.end(), b) != next.end();
    if (!ok) {
      // A needle between them or a copied span's edge is the only exception.
      bool near_span = false;
      for (const auto& sp : s.spans) near_span |= (int64_t)i + 1 == sp.copy || (int64_t)i + 1 == sp.copy + sp.length;
      EXPECT_TRUE(near_span) << "at position " << i;
    }
    ++checked;
  }
  EXPECT_GT(checked, 1000);
}

// Fraction of filler runs' pairs (ids[i], ids[i + d]) whose second token is a chain successor of the first.
static double chain_fraction(const ToyTask& task, const ToySample& s, int64_t d) {
  const auto& c = task.config();
  auto is_filler = [&](int64_t t) { return t >= c.filler_begin() && t < c.key_begin(); };
  int64_t total = 0, hits = 0;
  for (size_t i = 1; i + d < s.ids.size(); ++i) {
    bool run = true;
    for (int64_t k = 0; k <= d; ++k) run &= is_filler(s.ids[i + k]);
    if (!run) continue;
    const auto& next = task.successors(s.ids[i]);
    hits += std::find(next.begin(), next.end(), s.ids[i + d]) != next.end();
    ++total;
  }
  EXPECT_GT(total, 1000);
  return static_cast<double>(hits) / static_cast<double>(std::max<int64_t>(total, 1));
}

TEST(ToyTask, MarkovLagTwoChainsEveryOtherToken) {
  ToyTaskConfig cfg = small_config();
  cfg.markov_lag = 2;
  ToyTask task(cfg);
  const auto s = task.generate(4096, 11);
  // Lag-2 pairs follow the chain except where a needle or a copied span's edge interrupts a run; lag-1 pairs
  // match only by chance (4 successors of 248 fillers: ~1.6%).
  EXPECT_GT(chain_fraction(task, s, 2), 0.97);
  EXPECT_LT(chain_fraction(task, s, 1), 0.1);
  // The default lag 1 is the other way round.
  ToyTask lag1(small_config());
  const auto s1 = lag1.generate(4096, 11);
  EXPECT_GT(chain_fraction(lag1, s1, 1), 0.97);
  EXPECT_LT(chain_fraction(lag1, s1, 2), 0.2);
}

TEST(ToyTask, RandomSpansAreCopiedAndAvoidNeedleKeys) {
  ToyTaskConfig cfg = small_config();
  cfg.random_spans = true;
  cfg.num_spans = 4;
  cfg.key_len = 1;
  ToyTask task(cfg);
  int64_t non_filler = 0, chained = 0, pairs = 0;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    const auto s = task.generate(2048, seed);
    ASSERT_EQ(static_cast<int64_t>(s.spans.size()), cfg.num_spans);
    std::set<int64_t> keys;
    for (const auto& nd : s.needles) keys.insert(nd.key.begin(), nd.key.end());
    for (const auto& sp : s.spans) {
      for (int64_t i = 0; i < sp.length; ++i) {
        const int64_t t = s.ids[static_cast<size_t>(sp.source + i)];
        EXPECT_EQ(s.ids[static_cast<size_t>(sp.copy + i)], t);
        EXPECT_EQ(keys.count(t), 0u) << "a needle key inside a span: a query would match twice";
        EXPECT_GE(t, cfg.filler_begin());
        EXPECT_LT(t, cfg.value_begin() + cfg.num_values);
        non_filler += t >= cfg.key_begin();
        if (i + 1 < sp.length && t < cfg.key_begin()) {
          const int64_t u = s.ids[static_cast<size_t>(sp.source + i + 1)];
          if (u < cfg.key_begin()) {
            const auto& next = task.successors(t);
            chained += std::find(next.begin(), next.end(), u) != next.end();
            ++pairs;
          }
        }
      }
    }
  }
  // Uniform over ~488 tokens: about half are keys or values, and filler pairs follow the chain only by chance.
  EXPECT_GT(non_filler, 8 * 4 * 32 / 4);
  EXPECT_LT(static_cast<double>(chained) / static_cast<double>(std::max<int64_t>(pairs, 1)), 0.1);
}

TEST(ToyTask, BranchingZeroIsAUniformHaystack) {
  ToyTaskConfig cfg = small_config();
  cfg.markov_branching = 0;
  cfg.num_spans = 0;
  ToyTask task(cfg);
  std::vector<int64_t> seen(static_cast<size_t>(cfg.num_filler), 0);
  int64_t n = 0;
  for (uint64_t seed = 0; seed < 40; ++seed)
    for (int64_t t : task.generate(2048, seed).ids)
      if (t >= cfg.filler_begin() && t < cfg.key_begin()) ++seen[static_cast<size_t>(t - cfg.filler_begin())], ++n;
  // ~75K draws over 248 tokens: ~300 each; a chain with 4 successors would leave most counts far off.
  const double mean = static_cast<double>(n) / cfg.num_filler;
  for (int64_t c : seen) EXPECT_NEAR(static_cast<double>(c), mean, 5 * std::sqrt(mean));
}

TEST(ToyTask, ValidationNamesTheFields) {
  ToyTaskConfig c = small_config();
  c.num_queries = 20;
  try {
    ToyTask t(c);
    FAIL();
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("toy_queries"), std::string::npos) << e.what();
  }
  c = small_config();
  c.vocab_size = 300;
  EXPECT_THROW(ToyTask{c}, rtp::Error);
  ToyTask ok(small_config());
  EXPECT_THROW(ok.generate(100, 1), rtp::Error);  // too short
}

TEST(ToyTask, BatchAndLossConvention) {
  ToyTask task(small_config());
  const auto samples = task.generate_many(384, 1, 0, 0, 3);
  const auto b = make_batch(samples, 5.0);
  ASSERT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{3, 384}));
  EXPECT_EQ(b.targets[1][10].item<int64_t>(), samples[1].ids[11]);
  EXPECT_EQ(b.targets[1][383].item<int64_t>(), -100);
  EXPECT_EQ(b.loss_weights[1][383].item<float>(), 0.0f);
  const int64_t p = samples[2].answer_positions[0];
  EXPECT_EQ(b.loss_weights[2][p].item<float>(), 5.0f);
  EXPECT_TRUE(b.answer_mask[2][p].item<bool>());
  EXPECT_EQ(b.answer_mask.sum().item<int64_t>(), 3 * 8 * 3);
  // copy_mask: every target inside a span copy except its first token, and it equals the token after the same
  // offset in the source (what an induction head predicts). At 1024 tokens the spans find room between needles.
  const auto long_samples = task.generate_many(1024, 1, 0, 0, 3);
  const auto lb = make_batch(long_samples, 5.0);
  int64_t copies = 0;
  for (size_t s = 0; s < long_samples.size(); ++s)
    for (const auto& sp : long_samples[s].spans) {
      copies += sp.length - 1;
      EXPECT_FALSE(lb.copy_mask[static_cast<int64_t>(s)][sp.copy - 1].item<bool>());
      for (int64_t i = 1; i < sp.length; ++i) {
        ASSERT_TRUE(lb.copy_mask[static_cast<int64_t>(s)][sp.copy + i - 1].item<bool>());
        EXPECT_EQ(lb.targets[static_cast<int64_t>(s)][sp.copy + i - 1].item<int64_t>(), long_samples[s].ids[sp.source + i]);
      }
    }
  EXPECT_GT(copies, 0);
  EXPECT_EQ(lb.copy_mask.sum().item<int64_t>(), copies);
  // Uniform logits: every target's CE is log(V), so the weighted mean is log(V) too.
  auto logits = torch::zeros({3, 384, 512});
  EXPECT_NEAR(weighted_lm_loss(logits, b).item<double>(), std::log(512.0), 1e-5);
}

// Short, copy-dense sequences (the first phase of recipes/toy-pretrain.yaml): a third of the tokens are span
// copies, and every span must be placed, with no needle inside a span's source or copy.
TEST(ToyTask, ShortCopyDenseSequencesPlaceEverySpan) {
  ToyTaskConfig cfg = small_config();
  cfg.num_needles = 6;
  cfg.num_queries = 6;
  cfg.key_len = 1;
  cfg.value_len = 1;
  cfg.num_spans = 3;
  cfg.span_len = 24;
  cfg.random_spans = true;
  cfg.adjacent = true;
  ToyTask task(cfg);
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const auto s = task.generate(256, seed);
    ASSERT_EQ(static_cast<int64_t>(s.spans.size()), cfg.num_spans) << "seed " << seed;
    for (const auto& sp : s.spans)
      for (const auto& nd : s.needles) {
        const int64_t a = nd.position, b = nd.position + cfg.needle_len();  // needle occupies [a, b)
        EXPECT_FALSE(a < sp.source + sp.length && sp.source < b) << "needle inside a span source, seed " << seed;
        EXPECT_FALSE(a < sp.copy + sp.length && sp.copy < b) << "needle inside a span copy, seed " << seed;
      }
  }
}
