// `rtpurbo-eval --task toy` end to end: the shipped toy model with every head streaming, and a tiny random
// toy-vocabulary model whose every reported number (dense, sparse and random-heads accuracy, attention fraction,
// density, block-selection recall, token-level indexer recall, KV bytes) is checked against a reference computed
// here (argmax passes, dense and through the sparse definition by loops); report.html sections; the random-heads map.
#include "rtp/eval/toy_eval.h"

#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/data/toy_task.h"
#include "rtp/train/toy_data.h"
#include "rtp/train/recipe.h"
#include "sparse/sparse_definition.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using rtp::sparse::HeadMap;

// Per process (two checkouts, or two runs, testing at once must not share it), removed after a run where every
// test passed. Made known before the tests run, so that its cleanup is registered with them.
const std::string& scratch_root() { return rtp::testing::process_scratch_dir("rtp_toy_eval_test"); }
[[maybe_unused]] const std::string& kScratchAtStart = scratch_root();

std::string scratch(const std::string& name) {
  const std::string d = scratch_root() + "/" + name;
  rtp::remove_tree(d);
  fs::create_directories(fs::path(d).parent_path());
  return d;
}

rtp::sparse::Indexer random_indexer(const HeadMap& heads, int64_t head_dim, int64_t dim, uint64_t seed) {
  rtp::sparse::Indexer ix(heads, head_dim, dim);
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& [name, t] : ix.named_parameters()) t.copy_(torch::randn(t.sizes()));
  return ix;
}

// (query, key) pairs one streaming query head attends to over T tokens by the definition's rule, and causal pairs.
double streaming_pairs(int64_t T, const rtp::sparse::SparseSettings& s) {
  double n = 0;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j <= i; ++j) n += rtp::testing::streaming_visible(i, j, s) ? 1 : 0;
  return n;
}
double causal_pairs(int64_t T) {
  double n = 0;
  for (int64_t i = 0; i < T; ++i) n += static_cast<double>(i + 1);
  return n;
}

// The toy task of a model directory, read here from its rtpurbo_toy_task.json (not through the eval's reader).
rtp::data::ToyTask toy_task_of(const std::string& dir, int64_t vocab_size) {
  rtp::train::TrainConfig tc;
  const json task = rtp::read_json_file(dir + "/rtpurbo_toy_task.json")["train_config"];
  for (auto it = task.begin(); it != task.end(); ++it)
    rtp::train::train_config_registry().set(tc, it.key(), it->is_string() ? it->get<std::string>() : it->dump(), "test");
  tc.vocab_size = vocab_size;
  return rtp::data::ToyTask(rtp::train::toy_task_config(tc));
}

// The sparse forward by its definition (sparse/sparse_definition.h), for whole sequences, with the indexer before or
// after RoPE as the settings say. Counts what the eval
// reports: attended and causal pairs per (layer, KV head) summed over query heads, and the true attention mass
// (causal softmax over every key) that retrieval query heads keep on their visible keys, per query. Records how far
// every top-p decision lies from flipping, so that a comparison with the float32 eval can be required to be well
// posed.
class DefinitionSeam : public rtp::model::AttentionSeam {
 public:
  DefinitionSeam(const HeadMap& heads, const rtp::sparse::SparseSettings& st, const rtp::sparse::Indexer& ix)
      : heads_(heads), st_(st) {
    EXPECT_EQ(st.query_sub_blocks, 1);  // what the definition covers
    EXPECT_EQ(st.sub_block_aggregate, "mean");
    EXPECT_EQ(st.local_blocks, 1);
    EXPECT_EQ(st.dense_below, 0);
    EXPECT_EQ(ix.dim(), st.indexer_dim);
    for (int64_t l = 0; l < heads.num_layers; ++l) {
      const bool has = !heads.retrieval_heads(l).empty();
      wq_.push_back(has ? ix.q_proj(l).to(torch::kFloat64).contiguous() : torch::Tensor());
      wk_.push_back(has ? ix.k_proj(l).to(torch::kFloat64).contiguous() : torch::Tensor());
    }
    attended.assign(heads.num_layers, std::vector<double>(heads.num_kv_heads, 0.0));
    causal = attended;
  }

  std::vector<std::vector<double>> attended, causal;  // [layer][KV head], summed over its query heads
  double mass_kept = 0, mass_terms = 0;                // retrieval query heads: sum over queries, and their number
  double margin = 1e300;                               // min over top-p decisions of the distance from flipping
  int64_t dropped_blocks = 0, kept_unforced_blocks = 0;

  double sum(const std::vector<std::vector<double>>& a) const {
    double n = 0;
    for (const auto& row : a)
      for (double x : row) n += x;
    return n;
  }

  torch::Tensor attend(const rtp::model::LayerAttentionInputs& in) override {
    std::vector<torch::Tensor> outs;
    for (int64_t b = 0; b < in.q.size(0); ++b) outs.push_back(attend_one(in, b));
    return torch::stack(outs, 0).to(in.q.dtype());
  }

 private:
  torch::Tensor attend_one(const rtp::model::LayerAttentionInputs& in, int64_t b) {
    const int64_t l = in.layer, Hq = in.q.size(1), Hkv = in.k.size(1), T = in.q.size(2), D = in.q.size(3);
    const int64_t G = Hq / Hkv;
    const auto q = in.q[b].to(torch::kFloat64).contiguous(), k = in.k[b].to(torch::kFloat64).contiguous();
    const auto v = in.v[b].to(torch::kFloat64).contiguous();
    const auto qp = in.q_pre_rope[b].to(torch::kFloat64).contiguous();
    const auto kp = in.k_pre_rope[b].to(torch::kFloat64).contiguous();
    const auto Q = q.accessor<double, 3>(), K = k.accessor<double, 3>(), V = v.accessor<double, 3>();
    auto out = torch::zeros({Hq, T, D}, torch::kFloat64);
    auto O = out.accessor<double, 3>();
    int64_t r = 0;
    for (int64_t g = 0; g < Hkv; ++g) {
      const bool ret = heads_.is_retrieval(l, g);
      const rtp::testing::VisibilityMask vis =
          ret ? retrieval_visibility(l, r++, g, G, T, D, (st_.post_rope_indexer ? q : qp).accessor<double, 3>(),
                                     (st_.post_rope_indexer ? k : kp).accessor<double, 3>())
              : rtp::testing::streaming_visibility(T, st_);
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j <= i; ++j) attended[l][g] += vis[i][j] ? G : 0;
      causal[l][g] += static_cast<double>(G) * causal_pairs(T);
      for (int64_t h = g * G; h < (g + 1) * G; ++h)
        for (int64_t i = 0; i < T; ++i) {
          const auto z = rtp::testing::attend_row(Q[h][i], K[g], V[g], vis[i], i, D, in.scale, O[h][i]);
          if (ret) {
            mass_kept += z.visible / z.causal;
            mass_terms += 1;
          }
        }
    }
    return out;
  }

  template <typename A>
  rtp::testing::VisibilityMask retrieval_visibility(int64_t l, int64_t r, int64_t g, int64_t G, int64_t T, int64_t D,
                                                    const A& QP, const A& KP) {
    const auto iv = rtp::testing::retrieval_index_vectors(wq_[l].accessor<double, 2>(), wk_[l].accessor<double, 2>(),
                                                          QP, KP, r, g, G, T, D, st_.indexer_dim);
    const auto lists = rtp::testing::prompt_block_lists(iv, T, st_);
    for (const auto& list : lists) {
      margin = std::min(margin, list.margin);
      dropped_blocks += list.dropped;
      kept_unforced_blocks += list.kept_optional;
    }
    return rtp::testing::block_visibility(lists, T, T, st_.block_size);
  }

  HeadMap heads_;
  rtp::sparse::SparseSettings st_;
  std::vector<torch::Tensor> wq_, wk_;
};

// Teacher-forced exact match by a plain argmax pass over the answer positions (ToySample::answer_positions,
// value_len per query in query order), one sequence at a time, through `seam` (nullptr: dense). `gap` gets the
// smallest distance between the best and second-best logit at an answer position (an argmax within rounding of
// changing would make a comparison with the eval's run ill posed).
rtp::data::ToyAccuracy argmax_accuracy(rtp::model::Qwen3Model& model, const std::vector<rtp::data::ToySample>& samples,
                                       int64_t value_len, rtp::model::AttentionSeam* seam, double* gap) {
  torch::NoGradGuard g;
  rtp::model::ForwardOptions fo;
  fo.attention = seam;
  rtp::data::ToyAccuracy a;
  for (const auto& smp : samples) {
    const auto logits = model.forward(torch::tensor(smp.ids, torch::kInt64).unsqueeze(0), fo)[0].to(torch::kFloat64);
    const auto Lg = logits.accessor<double, 2>();
    const int64_t V = logits.size(1), n = static_cast<int64_t>(smp.answer_positions.size());
    EXPECT_EQ(n, static_cast<int64_t>(smp.queries.size()) * value_len);
    for (int64_t q = 0; q < n / value_len; ++q) {
      bool all = true;
      for (int64_t t = 0; t < value_len; ++t) {
        const int64_t p = smp.answer_positions[q * value_len + t];
        int64_t best = 0;
        for (int64_t c = 1; c < V; ++c)
          if (Lg[p][c] > Lg[p][best]) best = c;
        double second = -1e300;
        for (int64_t c = 0; c < V; ++c)
          if (c != best) second = std::max(second, Lg[p][c]);
        *gap = std::min(*gap, Lg[p][best] - second);
        const bool ok = best == smp.ids[p + 1];
        a.correct_tokens += ok;
        a.answer_tokens += 1;
        all = all && ok;
      }
      a.queries += 1;
      a.correct += all;
    }
  }
  return a;
}

// The indexer's token-level recall by loops in double (the eval's indexer_token_recall, from its definition): over
// a dense forward of each sample, for every retrieval query head and query i >= first_query, the index
// probabilities softmax_j<=i(index_q . index_k / sqrt(dim)), the smallest set of keys taken by descending index
// probability whose mass reaches top_p, and the true attention mass (causal softmax of q . k * scale) on it; the
// mean over (sample, head, query). `margin`: how far the nearest cut lies from top_p.
double token_recall_by_loops(rtp::model::Qwen3Model& model, const std::vector<rtp::data::ToySample>& samples,
                             const rtp::sparse::Indexer& ix, bool post_rope, double top_p, int64_t first_query,
                             double* margin) {
  const HeadMap& heads = ix.heads();
  const int64_t G = heads.group_size, I = ix.dim();
  double sum = 0, terms = 0;
  rtp::model::ForwardOptions fo;
  fo.observer = [&](const rtp::model::LayerAttentionInputs& in) {
    const auto ret = heads.retrieval_heads(in.layer);
    if (ret.empty()) return;
    const int64_t T = in.q.size(2), D = in.q.size(3);
    const auto q = in.q[0].to(torch::kFloat64).contiguous(), k = in.k[0].to(torch::kFloat64).contiguous();
    const auto qi = (post_rope ? in.q : in.q_pre_rope)[0].to(torch::kFloat64).contiguous();
    const auto ki = (post_rope ? in.k : in.k_pre_rope)[0].to(torch::kFloat64).contiguous();
    const auto wq = ix.q_proj(in.layer).to(torch::kFloat64).contiguous();
    const auto wk = ix.k_proj(in.layer).to(torch::kFloat64).contiguous();
    const auto Q = q.accessor<double, 3>(), K = k.accessor<double, 3>();
    for (size_t r = 0; r < ret.size(); ++r) {
      const int64_t g = ret[r];
      const auto iv = rtp::testing::retrieval_index_vectors(wq.accessor<double, 2>(), wk.accessor<double, 2>(),
                                                            qi.accessor<double, 3>(), ki.accessor<double, 3>(),
                                                            static_cast<int64_t>(r), g, G, T, D, I);
      for (int64_t h = 0; h < G; ++h) {
        const int64_t qh = g * G + h;
        for (int64_t i = first_query; i < T; ++i) {
          std::vector<double> s(i + 1), t(i + 1);
          for (int64_t j = 0; j <= i; ++j) {
            double c = 0;
            for (int64_t d = 0; d < D; ++d) c += Q[qh][i][d] * K[g][j][d];
            s[j] = rtp::testing::index_score(iv.q[h][i], iv.k[j]);
            t[j] = c * in.scale;
          }
          auto softmax = [](std::vector<double>& x) {
            const double mx = *std::max_element(x.begin(), x.end());
            double z = 0;
            for (double& y : x) z += (y = std::exp(y - mx));
            for (double& y : x) y /= z;
          };
          softmax(s);
          softmax(t);
          std::vector<int64_t> order(i + 1);
          for (int64_t j = 0; j <= i; ++j) order[j] = j;
          std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return s[a] > s[c]; });
          double before = 0, kept = 0;
          for (int64_t j : order) {
            *margin = std::min(*margin, std::fabs(before - top_p));
            if (before >= top_p) break;
            kept += t[j];
            before += s[j];
          }
          sum += kept;
          terms += 1;
        }
      }
    }
  };
  torch::NoGradGuard g;
  for (const auto& smp : samples) model.forward(torch::tensor(smp.ids, torch::kInt64).unsqueeze(0), fo);
  return terms > 0 ? sum / terms : 0;
}

TEST(ToyEval, KvBytesCountRetrievalIndexKeysAndBoundedStreamingCaches) {
  HeadMap h = HeadMap::all_streaming(2, 2, 4);
  h.retrieval[0][1] = 1;
  auto b = rtp::eval::kv_cache_bytes(h, 8, 2, 1, 3, 100, 2);
  EXPECT_DOUBLE_EQ(b.dense, 4 * 100 * 2 * 8 * 2);
  EXPECT_DOUBLE_EQ(b.sparse, 100 * 2 * 8 * 2 + 100 * 2 * 2 + 3 * (4 * 2 * 8 * 2));
  auto short_seq = rtp::eval::kv_cache_bytes(h, 8, 2, 1, 3, 2, 2);  // shorter than sink + window
  EXPECT_DOUBLE_EQ(short_seq.sparse, 2 * 2 * 8 * 2 + 2 * 2 * 2 + 3 * (2 * 2 * 8 * 2));
}

TEST(ToyEval, RandomHeadMapKeepsTheCountAndIsSeeded) {
  HeadMap h = HeadMap::all_streaming(6, 4, 2);
  h.retrieval[0][0] = h.retrieval[3][2] = h.retrieval[5][1] = 1;
  auto a = rtp::eval::random_head_map(h, 11), b = rtp::eval::random_head_map(h, 11),
       c = rtp::eval::random_head_map(h, 12);
  EXPECT_EQ(a.count_retrieval(), 3);
  EXPECT_EQ(c.count_retrieval(), 3);
  EXPECT_EQ(a.retrieval, b.retrieval);
  EXPECT_NE(a.retrieval, c.retrieval);
  EXPECT_EQ(a.group_size, 2);
}

// The shipped toy model through the eval, every KV head streaming (sink 4, window 96, no indexer): the dense numbers
// are toy_accuracy's on the held-out stream's first sequences, read independently from the task file (the model
// answers them: 100% in the default run), and the attention fraction and KV bytes equal the definition's counts.
TEST(ToyEval, ShippedModelAllStreamingMatchesTheDefinition) {
  const std::string base = RTP_SOURCE_DIR "/data/toy-model";
  const std::string out = scratch("toy-streaming"), eval_dir = scratch("toy-streaming-eval");
  const auto cfg = rtp::model::load_model_config(base + "/config.json");
  const HeadMap heads = HeadMap::all_streaming(cfg.num_hidden_layers, cfg.num_key_value_heads,
                                               cfg.num_attention_heads / cfg.num_key_value_heads);
  rtp::sparse::SparseSettings s;
  s.sink = 4;
  s.window = 96;
  rtp::sparse::export_converted({base, out, false}, heads, s, rtp::sparse::Indexer{});
  rtp::RunContext ctx;
  rtp::eval::ToyEvalOptions o;
  o.model_dir = out;
  o.samples = 4;
  o.lengths = {1024};
  o.out_dir = eval_dir;
  o.quiet = true;
  rtp::eval::run_toy_eval(o, ctx);
  const json j = rtp::read_json_file(eval_dir + "/eval.json");

  const rtp::data::ToyTask toy = toy_task_of(base, cfg.vocab_size);
  auto model = rtp::model::load_qwen3(base, torch::kCPU, torch::kFloat32);
  const auto expected = rtp::data::toy_accuracy(
      model, toy.generate_many(1024, ctx.seed, rtp::train::kEvalStream, 0, o.samples));
  const json& dense = j["dense"]["by_length"][0];
  EXPECT_EQ(dense["queries"].get<int64_t>(), expected.queries);
  EXPECT_EQ(expected.queries, o.samples * toy.config().num_queries);
  EXPECT_DOUBLE_EQ(dense["accuracy"].get<double>(), expected.accuracy());
  EXPECT_DOUBLE_EQ(dense["token_accuracy"].get<double>(), expected.token_accuracy());
  EXPECT_GE(expected.accuracy(), 0.95);

  // Every head is streaming: the fraction is one head's.
  EXPECT_NEAR(j["sparse"]["attention_fraction"].get<double>(), streaming_pairs(1024, s) / causal_pairs(1024), 1e-12);
  // float32 caches: dense 2 x D per token per KV head; streaming min(T, sink + window) tokens.
  const double per_token = 2.0 * cfg.head_dim * 4 * cfg.num_hidden_layers * cfg.num_key_value_heads;
  EXPECT_DOUBLE_EQ(j["dense"]["kv_bytes"].get<double>(), 1024 * per_token);
  EXPECT_DOUBLE_EQ(j["sparse"]["kv_bytes"].get<double>(), (s.sink + s.window) * per_token);
}

// A tiny random model with the toy vocabulary and a short toy task, exported with one retrieval KV head and a random
// indexer, and an indexer checkpoint for a random head map of the same count (the random-heads baseline).
struct TinyConverted {
  rtp::model::ModelConfig c;
  rtp::model::Qwen3Model m;
  std::string base, out, rck;
  HeadMap heads, rnd;
  rtp::sparse::SparseSettings s;
  rtp::sparse::RtpurboManifest prov;
  rtp::sparse::Indexer ix, rix;
};

rtp::model::ModelConfig tiny_config() {
  rtp::model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  return c;
}

TinyConverted make_tiny_converted(const std::string& tag) {
  TinyConverted t{tiny_config(), rtp::model::Qwen3Model(tiny_config())};
  t.m.init_random(5);
  t.base = scratch(tag + "-base"), t.out = scratch(tag + "-conv");
  rtp::model::save_qwen3(t.m, t.base);
  json task = {{"toy_num_filler", "24"}, {"toy_num_keys", "12"}, {"toy_num_values", "12"}, {"toy_needles", "4"},
               {"toy_queries", "2"},     {"toy_spans", "1"},     {"toy_span_len", "8"},    {"seq_len", "96"}};
  rtp::write_json_atomic(t.base + "/rtpurbo_toy_task.json", {{"format", "rtpurbo-toy-task"}, {"train_config", task}});
  t.heads = HeadMap::all_streaming(2, 2, 2);
  t.heads.retrieval[1][0] = 1;
  t.s.sink = 2;
  t.s.window = 16;
  t.s.block_size = 64;  // the selection kernels take 64 or 128
  t.s.indexer_dim = 16;
  t.s.top_p = 0.7;  // drops the optional block of one of the two sequences at 192 (for both head maps)
  t.prov.heads_source = t.base + "/heads.h5";
  rtp::write_file_atomic(t.base + "/heads.svg", "<?xml version=\"1.0\"?><svg id=\"identify-heads-picture\"></svg>");
  t.ix = random_indexer(t.heads, 16, 16, 1);
  rtp::sparse::export_converted({t.base, t.out, false}, t.prov, t.heads, t.s, t.ix);
  t.rnd = rtp::eval::random_head_map(t.heads, 1);  // layer 0 KV head 0 (seed 3 drew the identified head)
  t.rck = scratch(tag + "-random") + ".safetensors";
  t.rix = random_indexer(t.rnd, 16, 16, 2);
  rtp::sparse::save_indexer_checkpoint(t.rck, t.rix, t.s);
  return t;
}

TEST(ToyEval, WritesEvalJsonAndReport) {
  TinyConverted t = make_tiny_converted("tiny");
  const rtp::model::ModelConfig& c = t.c;
  rtp::model::Qwen3Model& m = t.m;
  const std::string &base = t.base, &out = t.out, &rck = t.rck, eval_dir = scratch("eval");
  const HeadMap &heads = t.heads, &rnd = t.rnd;
  const rtp::sparse::SparseSettings& s = t.s;
  const rtp::sparse::RtpurboManifest& prov = t.prov;
  const rtp::sparse::Indexer &ix = t.ix, &rix = t.rix;
  EXPECT_TRUE(fs::exists(out + "/rtpurbo_toy_task.json"));  // carried along for evaluation
  ASSERT_NE(rnd.retrieval, heads.retrieval);

  rtp::RunContext ctx;
  rtp::eval::ToyEvalOptions o;
  o.model_dir = out;
  o.samples = 2;
  o.lengths = {128, 192};
  o.out_dir = eval_dir;
  o.random_heads_indexer = rck;
  o.quiet = true;
  auto r = rtp::eval::run_toy_eval(o, ctx);
  ASSERT_EQ(r.by_length.size(), 2u);
  const json j = rtp::read_json_file(eval_dir + "/eval.json");
  EXPECT_EQ(j["lengths"], json({128, 192}));
  ASSERT_EQ(j["dense"]["by_length"].size(), 2u);
  ASSERT_EQ(j["sparse"]["by_length"].size(), 2u);
  ASSERT_TRUE(j["random_heads"].is_object());
  ASSERT_EQ(j["random_heads"]["by_length"].size(), 2u);
  EXPECT_EQ(j["random_heads"]["head_map"], rtp::sparse::head_map_to_json(rnd));

  // The reference, computed here: the held-out samples from the task file, the model in memory (not the exported
  // one), argmax passes dense and through DefinitionSeam (the identified heads with their indexer, the random heads
  // with theirs), and the KV bytes of float32 caches: K and V of head_dim per token per KV head, retrieval KV heads
  // T tokens plus T index keys of indexer_dim, streaming ones min(T, sink + window) tokens, dense T for every head.
  const rtp::data::ToyTask toy = toy_task_of(base, c.vocab_size);
  const int64_t value_len = toy.config().value_len;
  double gap = 1e300;
  rtp::data::ToyAccuracy dense_all, sparse_all, random_all;
  double att = 0, caus = 0, kept = 0, kept_n = 0, r_att = 0, r_caus = 0, r_kept = 0, r_kept_n = 0, margin = 1e300;
  int64_t dropped = 0, kept_unforced = 0;
  auto pool = [](rtp::data::ToyAccuracy& all, const rtp::data::ToyAccuracy& a) {
    all.queries += a.queries, all.correct += a.correct;
    all.answer_tokens += a.answer_tokens, all.correct_tokens += a.correct_tokens;
  };
  auto expect_accuracy = [](const json& e, const rtp::data::ToyAccuracy& a, const std::string& what) {
    EXPECT_DOUBLE_EQ(e["accuracy"].get<double>(), a.accuracy()) << what;
    EXPECT_DOUBLE_EQ(e["token_accuracy"].get<double>(), a.token_accuracy()) << what;
  };
  const double per_token = 2.0 * c.head_dim * 4;
  for (size_t n = 0; n < o.lengths.size(); ++n) {
    const int64_t T = o.lengths[n];
    const std::string at = "length " + std::to_string(T);
    const auto samples = toy.generate_many(T, ctx.seed, rtp::train::kEvalStream, 0, o.samples);
    DefinitionSeam sp(heads, s, ix), rs(rnd, s, rix);
    const auto dense = argmax_accuracy(m, samples, value_len, nullptr, &gap);
    const auto sparse = argmax_accuracy(m, samples, value_len, &sp, &gap);
    const auto random = argmax_accuracy(m, samples, value_len, &rs, &gap);
    const json &dj = j["dense"]["by_length"][n], &sj = j["sparse"]["by_length"][n],
               &rj = j["random_heads"]["by_length"][n];
    EXPECT_EQ(dj["length"].get<int64_t>(), T);
    EXPECT_EQ(dense.queries, o.samples * toy.config().num_queries) << at;
    EXPECT_EQ(dj["queries"].get<int64_t>(), dense.queries) << at;
    EXPECT_EQ(sj["queries"].get<int64_t>(), sparse.queries) << at;
    expect_accuracy(dj, dense, "dense, " + at);
    expect_accuracy(sj, sparse, "sparse, " + at);
    expect_accuracy(rj, random, "random heads, " + at);
    EXPECT_NEAR(sj["attention_fraction"].get<double>(), sp.sum(sp.attended) / sp.sum(sp.causal), 1e-12) << at;
    EXPECT_NEAR(rj["attention_fraction"].get<double>(), rs.sum(rs.attended) / rs.sum(rs.causal), 1e-12) << at;
    EXPECT_NEAR(sj["indexer_recall"].get<double>(), sp.mass_kept / sp.mass_terms, 1e-6) << at;
    EXPECT_NEAR(rj["indexer_recall"].get<double>(), rs.mass_kept / rs.mass_terms, 1e-6) << at;
    const double dense_kv = 2.0 * 2 * T * per_token;  // 2 layers x 2 KV heads
    const double sparse_kv = T * per_token + T * s.indexer_dim * 4.0 + 3 * std::min<int64_t>(T, s.sink + s.window) * per_token;
    EXPECT_DOUBLE_EQ(sj["kv_bytes"].get<double>(), sparse_kv) << at;
    EXPECT_DOUBLE_EQ(sj["dense_kv_bytes"].get<double>(), dense_kv) << at;
    if (n + 1 == o.lengths.size()) {
      EXPECT_DOUBLE_EQ(j["sparse"]["kv_bytes"].get<double>(), sparse_kv);
      EXPECT_DOUBLE_EQ(j["dense"]["kv_bytes"].get<double>(), dense_kv);
      EXPECT_DOUBLE_EQ(j["sparse"]["dense_kv_bytes"].get<double>(), dense_kv);
      for (int64_t l = 0; l < 2; ++l)
        for (int64_t g = 0; g < 2; ++g)
          EXPECT_NEAR(j["sparse"]["density"][l][g].get<double>(), sp.attended[l][g] / sp.causal[l][g], 1e-12)
              << "layer " << l << " KV head " << g;
    }
    pool(dense_all, dense);
    pool(sparse_all, sparse);
    pool(random_all, random);
    att += sp.sum(sp.attended), caus += sp.sum(sp.causal), kept += sp.mass_kept, kept_n += sp.mass_terms;
    r_att += rs.sum(rs.attended), r_caus += rs.sum(rs.causal), r_kept += rs.mass_kept, r_kept_n += rs.mass_terms;
    margin = std::min({margin, sp.margin, rs.margin});
    dropped += sp.dropped_blocks + rs.dropped_blocks;
    kept_unforced += sp.kept_unforced_blocks + rs.kept_unforced_blocks;
    std::cout << at << ": dense " << dense.correct << "/" << dense.queries << " queries, " << dense.correct_tokens
              << "/" << dense.answer_tokens << " tokens; sparse " << sparse.correct << ", " << sparse.correct_tokens
              << "; random heads " << random.correct << ", " << random.correct_tokens << "; blocks dropped "
              << sp.dropped_blocks << " / " << rs.dropped_blocks << "\n";
  }
  // pooled over the lengths: queries for accuracy, pairs for the fraction, queries for the recall
  expect_accuracy(j["dense"], dense_all, "dense");
  expect_accuracy(j["sparse"], sparse_all, "sparse");
  expect_accuracy(j["random_heads"], random_all, "random heads");
  EXPECT_NEAR(j["sparse"]["attention_fraction"].get<double>(), att / caus, 1e-12);
  EXPECT_NEAR(j["random_heads"]["attention_fraction"].get<double>(), r_att / r_caus, 1e-12);
  EXPECT_NEAR(j["sparse"]["indexer_recall"].get<double>(), kept / kept_n, 1e-6);
  EXPECT_NEAR(j["random_heads"]["indexer_recall"].get<double>(), r_kept / r_kept_n, 1e-6);
  // Well posed: no argmax and no top-p decision lies within the float32 eval's rounding of changing (seed 5, top-p
  // 0.7: smallest logit gap 3e-3, block mass margin 6e-2) ...
  EXPECT_GT(gap, 1e-4);
  EXPECT_GT(margin, 1e-4);
  // ... and the selection decides: an optional block is dropped in some lists and kept in others.
  EXPECT_GT(dropped, 0);
  EXPECT_GT(kept_unforced, 0);
  std::cout << "smallest logit gap " << gap << ", top-p margin " << margin << "\n";

  const std::string html = rtp::read_text_file(eval_dir + "/report.html");
  for (const char* id : {"id=\"summary\"", "id=\"heads\"", "id=\"density\"", "id=\"accuracy\""})
    EXPECT_NE(html.find(id), std::string::npos) << id;
  EXPECT_NE(html.find("identify-heads-picture"), std::string::npos);  // the SVG next to heads.h5
  EXPECT_NE(html.find("random heads"), std::string::npos);

  // A random-heads indexer trained after RoPE runs after RoPE, whatever position the model under test uses: the
  // baseline takes the model's selection settings and its own indexer's position.
  {
    rtp::sparse::SparseSettings post = s;
    post.post_rope_indexer = true;
    const std::string rck_post = scratch("random-post") + ".safetensors", eval_post = scratch("eval-post");
    rtp::sparse::save_indexer_checkpoint(rck_post, rix, post);
    rtp::eval::ToyEvalOptions op = o;
    op.random_heads_indexer = rck_post;
    op.out_dir = eval_post;
    op.lengths = {512};  // 8 key blocks: room for the two positions to select differently
    rtp::eval::run_toy_eval(op, ctx);
    const json jp = rtp::read_json_file(eval_post + "/eval.json");
    const auto samples = toy.generate_many(512, ctx.seed, rtp::train::kEvalStream, 0, o.samples);
    DefinitionSeam rs_post(rnd, post, rix), rs_pre(rnd, s, rix);
    const auto random_post = argmax_accuracy(m, samples, value_len, &rs_post, &gap);
    argmax_accuracy(m, samples, value_len, &rs_pre, &gap);
    const json& rj = jp["random_heads"]["by_length"][0];
    expect_accuracy(rj, random_post, "post-RoPE random heads");
    EXPECT_NEAR(rj["indexer_recall"].get<double>(), rs_post.mass_kept / rs_post.mass_terms, 1e-6);
    EXPECT_NEAR(rj["attention_fraction"].get<double>(), rs_post.sum(rs_post.attended) / rs_post.sum(rs_post.causal),
                1e-12);
    EXPECT_GT(rs_post.margin, 1e-4);  // well posed against the float32 eval
    // and the two positions select differently here, so the check above tells them apart
    std::cout << "random heads at 512: recall post-RoPE " << rs_post.mass_kept / rs_post.mass_terms << ", pre-RoPE "
              << rs_pre.mass_kept / rs_pre.mass_terms << ", margin " << rs_post.margin << "\n";
    EXPECT_GT(std::abs(rs_post.mass_kept / rs_post.mass_terms - rs_pre.mass_kept / rs_pre.mass_terms), 1e-4);
  }

  // without the random-heads indexer: omitted, and the JSON says so
  o.random_heads_indexer.clear();
  rtp::eval::run_toy_eval(o, ctx);
  const json j2 = rtp::read_json_file(eval_dir + "/eval.json");
  EXPECT_TRUE(j2["random_heads"].is_null());
  EXPECT_NE(j2["random_heads_note"].get<std::string>().find("omitted"), std::string::npos);

  // The token-level recall of the random indexer at the longest length: the definition's by loops (queries from
  // block_size on, up to 16 held-out sequences).
  const auto longest = toy.generate_many(o.lengths.back(), ctx.seed, rtp::train::kEvalStream, 0, o.samples);
  double tok_margin = 1e300;
  const double tok = token_recall_by_loops(m, longest, ix, false, 0.9, s.block_size, &tok_margin);
  EXPECT_NEAR(j2["sparse"]["indexer_token_recall"].get<double>(), tok, 1e-6);
  // Well posed: no row's cut lies within the float32 eval's rounding of top-p (its cumulative index mass is within
  // 2e-6 of the double one here: index scores of tens; the nearest cut is 2.4e-5 away).
  EXPECT_GT(tok_margin, 1e-5);
  std::cout << "random indexer: token recall " << tok << ", top-p margin " << tok_margin << "\n";
  EXPECT_EQ(j2["sparse"]["indexer_token_recall_top_p"].get<double>(), 0.9);

  // An indexer that reproduces the teacher's logits exactly (post-RoPE, identity projections, dim = head_dim, so
  // index score q.k / sqrt(16) = true logit q.k * scale): its top-p token set holds at least top_p of the true mass.
  {
    rtp::sparse::Indexer exact(heads, 16, 16);
    torch::NoGradGuard g;
    for (int64_t l = 0; l < heads.num_layers; ++l) {
      if (!exact.q_proj(l).defined()) continue;
      const int64_t n = static_cast<int64_t>(heads.retrieval_heads(l).size());
      exact.q_proj(l).copy_(torch::eye(16).repeat({n * heads.group_size, 1}));
      exact.k_proj(l).copy_(torch::eye(16).repeat({n, 1}));
    }
    rtp::sparse::SparseSettings se = s;
    se.post_rope_indexer = true;
    const std::string out_exact = scratch("conv-exact"), eval_exact = scratch("eval-exact");
    rtp::sparse::export_converted({base, out_exact, false}, prov, heads, se, exact);
    rtp::eval::ToyEvalOptions oe = o;
    oe.model_dir = out_exact;
    oe.out_dir = eval_exact;
    oe.random_heads_indexer.clear();
    for (double p : {0.5, 0.9}) {
      oe.token_recall_top_p = p;
      const auto re = rtp::eval::run_toy_eval(oe, ctx);
      std::cout << "exact indexer, top-p " << p << ": token recall " << re.token_recall << "\n";
      EXPECT_GE(re.token_recall, p - 1e-5) << "top-p " << p;
      EXPECT_LE(re.token_recall, 1.0 + 1e-6);
      EXPECT_LT(re.token_recall, p + 0.25) << "top-p " << p << ": a set barely over p must not hold nearly all mass";
      double exact_margin = 1e300;
      EXPECT_NEAR(re.token_recall, token_recall_by_loops(m, longest, exact, true, p, s.block_size, &exact_margin), 1e-6)
          << "top-p " << p;
      EXPECT_GT(exact_margin, 1e-6) << "top-p " << p;  // float32 cumulative mass within 1.5e-7 here; cuts 1.6e-6 away
    }
  }

  // a random-heads indexer with a different number of heads is refused
  HeadMap more = rnd;
  for (auto& row : more.retrieval) row.assign(row.size(), 1);
  rtp::sparse::save_indexer_checkpoint(rck, random_indexer(more, 16, 16, 2), s);
  o.random_heads_indexer = rck;
  EXPECT_THROW(rtp::eval::run_toy_eval(o, ctx), rtp::Error);

  // a length past the model's positions is refused before any sequence runs (it used to run for minutes)
  o.random_heads_indexer.clear();
  o.lengths = {128, 100000};
  try {
    rtp::eval::run_toy_eval(o, ctx);
    ADD_FAILURE() << "length 100000 was accepted";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("length 100000 exceeds the model's max_position_embeddings"),
              std::string::npos)
        << e.what();
  }
}

// A toy evaluation stopped after some passes and resumed (twice) writes the uninterrupted run's eval.json exactly; the
// resumed runs keep the passes the progress file holds; an unfinished evaluation in the way, another evaluation's
// progress, or nothing to resume are errors that say what to do.
TEST(ToyEval, ResumedEvaluationEqualsTheUninterruptedOne) {
  TinyConverted t = make_tiny_converted("resume");
  rtp::RunContext ctx;
  rtp::eval::ToyEvalOptions o;
  o.model_dir = t.out;
  o.samples = 2;
  o.lengths = {128, 192};
  o.random_heads_indexer = t.rck;
  o.quiet = true;
  o.out_dir = scratch("resume-whole");
  rtp::eval::run_toy_eval(o, ctx);
  const json whole = rtp::read_json_file(o.out_dir + "/eval.json");
  EXPECT_FALSE(fs::exists(o.out_dir + "/eval.progress.json"));  // finished: removed

  o.out_dir = scratch("resume-parts");
  const std::string progress = o.out_dir + "/eval.progress.json";
  auto passes_done = [&] { return rtp::read_json_file(progress)["passes"].size(); };
  auto expect_error = [&](const rtp::eval::ToyEvalOptions& opts, const std::string& says, const std::string& what) {
    try {
      rtp::eval::run_toy_eval(opts, ctx);
      ADD_FAILURE() << what << ": accepted";
    } catch (const rtp::Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << what << ": " << e.what();
    }
  };
  o.resume = true;
  expect_error(o, "there is no toy evaluation to continue", "--resume without a progress file");
  o.resume = false;
  o.stop_after_passes = 2;
  const auto first = rtp::eval::run_toy_eval(o, ctx);
  EXPECT_FALSE(first.finished);
  EXPECT_FALSE(fs::exists(o.out_dir + "/eval.json"));
  ASSERT_TRUE(fs::exists(progress));
  EXPECT_EQ(passes_done(), 2u);  // dense and sparse at 128

  expect_error(o, "pass --resume to continue it", "a fresh run over an unfinished one");
  o.resume = true;
  rtp::eval::ToyEvalOptions other = o;
  other.samples = 3;
  expect_error(other, "samples: was 2, now 3", "resuming with other settings");
  // The model re-exported in place with other settings is another model under the same path ...
  rtp::sparse::SparseSettings s2 = t.s;
  s2.top_p = 0.5;
  rtp::sparse::export_converted({t.base, t.out, false}, t.prov, t.heads, s2, t.ix);
  expect_error(o, "model_contents: was", "resuming over a model re-exported with other settings");
  // ... and so is another random-heads indexer written over the file the passes used ...
  rtp::sparse::export_converted({t.base, t.out, false}, t.prov, t.heads, t.s, t.ix);
  const std::string saved_rck = rtp::read_text_file(t.rck);
  rtp::sparse::save_indexer_checkpoint(t.rck, t.rix, s2);
  expect_error(o, "random_heads_indexer_contents: was", "resuming with another random-heads indexer in the file");
  rtp::write_file_atomic(t.rck, saved_rck);
  // ... while exporting it again as it was gives the same model: the resume below continues.

  o.stop_after_passes = 3;  // random heads at 128, dense and sparse at 192
  EXPECT_FALSE(rtp::eval::run_toy_eval(o, ctx).finished);
  EXPECT_EQ(passes_done(), 5u);
  o.stop_after_passes = 0;  // random heads at 192, the token-level recall
  const auto last = rtp::eval::run_toy_eval(o, ctx);
  EXPECT_TRUE(last.finished);
  EXPECT_FALSE(fs::exists(progress));
  const json resumed = rtp::read_json_file(o.out_dir + "/eval.json");
  EXPECT_EQ(resumed, whole) << "resumed:\n" << resumed.dump(1) << "\nuninterrupted:\n" << whole.dump(1);
  expect_error(o, "there is no toy evaluation to continue", "--resume after it finished");
}

}  // namespace
