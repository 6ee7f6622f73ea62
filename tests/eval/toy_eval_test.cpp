// `rtpurbo-eval --task toy` end to end on a tiny random toy-vocabulary model: eval.json fields, report.html
// sections, KV accounting and the random-heads map.
#include "rtp/eval/toy_eval.h"

#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/data/toy_task.h"
#include "rtp/train/toy_data.h"
#include "rtp/train/recipe.h"
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

  rtp::train::TrainConfig tc;
  const json task = rtp::read_json_file(base + "/rtpurbo_toy_task.json")["train_config"];
  for (auto it = task.begin(); it != task.end(); ++it)
    rtp::train::train_config_registry().set(tc, it.key(), it->is_string() ? it->get<std::string>() : it->dump(), "test");
  tc.vocab_size = cfg.vocab_size;
  const rtp::data::ToyTask toy(rtp::train::toy_task_config(tc));
  auto model = rtp::model::load_qwen3(base, torch::kCPU, torch::kFloat32);
  const auto expected = rtp::data::toy_accuracy(
      model, toy.generate_many(1024, ctx.seed, rtp::train::kEvalStream, 0, o.samples));
  const json& dense = j["dense"]["by_length"][0];
  EXPECT_EQ(dense["queries"].get<int64_t>(), expected.queries);
  EXPECT_EQ(expected.queries, o.samples * tc.toy_queries);
  EXPECT_DOUBLE_EQ(dense["accuracy"].get<double>(), expected.accuracy());
  EXPECT_DOUBLE_EQ(dense["token_accuracy"].get<double>(), expected.token_accuracy());
  EXPECT_GE(expected.accuracy(), 0.95);

  // Key j is visible to query i iff j <= i and (j < sink or j > i - window), for every head alike.
  double attended = 0, causal = 0;
  for (int64_t i = 0; i < 1024; ++i)
    for (int64_t k = 0; k <= i; ++k) {
      causal += 1;
      attended += (k < s.sink || k > i - s.window) ? 1 : 0;
    }
  EXPECT_NEAR(j["sparse"]["attention_fraction"].get<double>(), attended / causal, 1e-12);
  // float32 caches: dense 2 x D per token per KV head; streaming min(T, sink + window) tokens.
  const double per_token = 2.0 * cfg.head_dim * 4 * cfg.num_hidden_layers * cfg.num_key_value_heads;
  EXPECT_DOUBLE_EQ(j["dense"]["kv_bytes"].get<double>(), 1024 * per_token);
  EXPECT_DOUBLE_EQ(j["sparse"]["kv_bytes"].get<double>(), (s.sink + s.window) * per_token);
}

TEST(ToyEval, WritesEvalJsonAndReport) {
  // A tiny random model with the toy vocabulary, a short toy task, and an export with a random indexer.
  rtp::model::ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 1024;
  rtp::model::Qwen3Model m(c);
  m.init_random(5);
  const std::string base = scratch("base"), out = scratch("conv"), eval_dir = scratch("eval");
  rtp::model::save_qwen3(m, base);
  json task = {{"toy_num_filler", "24"}, {"toy_num_keys", "12"}, {"toy_num_values", "12"}, {"toy_needles", "4"},
               {"toy_queries", "2"},     {"toy_spans", "1"},     {"toy_span_len", "8"},    {"seq_len", "96"}};
  rtp::write_json_atomic(base + "/rtpurbo_toy_task.json", {{"format", "rtpurbo-toy-task"}, {"train_config", task}});
  HeadMap heads = HeadMap::all_streaming(2, 2, 2);
  heads.retrieval[1][0] = 1;
  rtp::sparse::SparseSettings s;
  s.sink = 2;
  s.window = 16;
  s.block_size = 64;  // the selection kernels take 64 or 128
  s.indexer_dim = 16;
  rtp::sparse::RtpurboManifest prov;
  prov.heads_source = base + "/heads.h5";
  rtp::write_file_atomic(base + "/heads.svg", "<?xml version=\"1.0\"?><svg id=\"identify-heads-picture\"></svg>");
  rtp::sparse::export_converted({base, out, false}, prov, heads, s, random_indexer(heads, 16, 16, 1));
  EXPECT_TRUE(fs::exists(out + "/rtpurbo_toy_task.json"));  // carried along for evaluation

  // random-heads baseline indexer
  const HeadMap rnd = rtp::eval::random_head_map(heads, 3);
  const std::string rck = scratch("random") + ".safetensors";
  rtp::sparse::save_indexer_checkpoint(rck, random_indexer(rnd, 16, 16, 2), s);

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
  for (const char* k : {"accuracy", "kv_bytes"}) EXPECT_TRUE(j["dense"].contains(k)) << k;
  for (const char* k : {"accuracy", "attention_fraction", "indexer_recall", "kv_bytes", "density", "by_length"})
    EXPECT_TRUE(j["sparse"].contains(k)) << k;
  EXPECT_TRUE(j["random_heads"].is_object());
  EXPECT_TRUE(j["random_heads"].contains("accuracy"));
  EXPECT_EQ(j["lengths"], json({128, 192}));
  EXPECT_EQ(j["sparse"]["by_length"].size(), 2u);
  const double frac = j["sparse"]["attention_fraction"].get<double>();
  EXPECT_GT(frac, 0.0);
  EXPECT_LT(frac, 1.0);  // streaming heads with window 16 at length 128+ attend far less than dense
  const double recall = j["sparse"]["indexer_recall"].get<double>();
  EXPECT_GT(recall, 0.0);
  EXPECT_LE(recall, 1.0 + 1e-9);
  EXPECT_LT(j["sparse"]["kv_bytes"].get<double>(), j["dense"]["kv_bytes"].get<double>());
  EXPECT_EQ(j["sparse"]["density"].size(), 2u);
  const auto& hw = j["sparse"]["density"];
  EXPECT_LT(hw[0][0].get<double>(), 1.0);                              // a streaming head

  const std::string html = rtp::read_text_file(eval_dir + "/report.html");
  for (const char* id : {"id=\"summary\"", "id=\"heads\"", "id=\"density\"", "id=\"accuracy\""})
    EXPECT_NE(html.find(id), std::string::npos) << id;
  EXPECT_NE(html.find("identify-heads-picture"), std::string::npos);  // the SVG next to heads.h5
  EXPECT_NE(html.find("random heads"), std::string::npos);

  // without the random-heads indexer: omitted, and the JSON says so
  o.random_heads_indexer.clear();
  rtp::eval::run_toy_eval(o, ctx);
  const json j2 = rtp::read_json_file(eval_dir + "/eval.json");
  EXPECT_TRUE(j2["random_heads"].is_null());
  EXPECT_NE(j2["random_heads_note"].get<std::string>().find("omitted"), std::string::npos);

  // the token-level recall is reported, in [0, 1], for the random indexer
  const double tok = j2["sparse"]["indexer_token_recall"].get<double>();
  EXPECT_GE(tok, 0.0);
  EXPECT_LE(tok, 1.0 + 1e-9);
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

}  // namespace
