#include <gtest/gtest.h>

#include <cstdio>
#include <torch/torch.h>

#include <fstream>
#include <tuple>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/eval/ruler_eval.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/text/ruler.h"
#include "rtp/text/tokenizer.h"
#include "test_util.h"

namespace {

// The real Qwen3 tokenizer: the shared copy, else the identical one committed with the fixtures (a clone alone).
const std::string kTokenizer = [] {
  const std::string shared = RTP_SOURCE_DIR "/../shared/data/qwen3-tokenizer/tokenizer.json";
  return std::ifstream(shared).good() ? shared : std::string(RTP_SOURCE_DIR "/data/fixtures/tokenizer/qwen3/tokenizer.json");
}();

TEST(RulerEval, TaskListParsing) {
  EXPECT_EQ(rtp::eval::parse_ruler_tasks("ruler:niah_single_1,vt"), (std::vector<std::string>{"niah_single_1", "vt"}));
  try {
    rtp::eval::parse_ruler_tasks("ruler:needle");
    FAIL();
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ruler:niah_multiquery"), std::string::npos) << e.what();
  }
}

TEST(RulerEval, DumpPromptsWritesOneLinePerSample) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  rtp::eval::RulerEvalOptions o;
  o.tokenizer = kTokenizer;
  o.tasks = {"niah_single_1", "fwe"};
  o.lengths = {1024, 2048};
  o.samples = 2;
  o.dump_prompts = std::string(RTP_BINARY_DIR) + "/tmp-ruler-prompts.jsonl";
  rtp::RunContext ctx;
  rtp::eval::run_ruler_eval(o, ctx);
  // Line by line, in the order task, length, sample: the generator's own sample for that (task, length, index).
  const auto tok = rtp::text::Tokenizer::from_file(kTokenizer);
  std::vector<std::tuple<std::string, int64_t, int64_t>> expected;
  for (const auto& task : o.tasks)
    for (int64_t len : o.lengths)
      for (int64_t i = 0; i < o.samples; ++i) expected.emplace_back(task, len, i);
  std::ifstream in(o.dump_prompts);
  size_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    ASSERT_LT(lines, expected.size());
    const auto& [task, len, index] = expected[lines];
    const auto j = nlohmann::json::parse(line);
    const auto s = rtp::text::ruler::generate_sample(task, tok, {len, ctx.seed, ""}, index);
    EXPECT_EQ(j.at("task"), task);
    EXPECT_EQ(j.at("length"), len);
    EXPECT_EQ(j.at("index"), index);
    EXPECT_EQ(j.at("input").get<std::string>(), s.prompt) << task << " @" << len << " #" << index;
    EXPECT_EQ(j.at("outputs").get<std::vector<std::string>>(), s.answers);
    EXPECT_EQ(j.at("tokens_to_generate"), s.tokens_to_generate);
  }
  EXPECT_EQ(lines, expected.size());
}

// An essay task later in the list is refused before the tasks before it run (it failed after them).
TEST(RulerEval, EssayTaskWithoutEssayIsRefusedBeforeAnyWork) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  rtp::eval::RulerEvalOptions o;
  o.tokenizer = kTokenizer;
  o.tasks = {"niah_single_1", "niah_multikey_1"};
  o.lengths = {1024};
  o.samples = 1;
  rtp::RunContext ctx;
  testing::internal::CaptureStderr();  // the per-sample progress lines show what ran before the error
  try {
    rtp::eval::run_ruler_eval(o, ctx);
    testing::internal::GetCapturedStderr();
    FAIL() << "no error";
  } catch (const rtp::Error& e) {
    const std::string progress = testing::internal::GetCapturedStderr();
    EXPECT_NE(std::string(e.what()).find("niah_multikey_1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--essay"), std::string::npos) << e.what();
    EXPECT_EQ(progress.find("niah_single_1"), std::string::npos) << "niah_single_1 ran first:\n" << progress;
  }
}

TEST(RulerEval, ModelAndTokenizerMustBelongTogether) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  rtp::eval::RulerEvalOptions o;
  o.model_dir = std::string(RTP_SOURCE_DIR) + "/data/fixtures/models/qwen3-tiny";  // vocab 256
  o.tokenizer = kTokenizer;
  o.tasks = {"vt"};
  o.lengths = {256};  // within the model's 512 positions
  o.dense = true;
  o.sparse = false;
  rtp::RunContext ctx;
  try {
    rtp::eval::run_ruler_eval(o, ctx);
    FAIL();
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not belong together"), std::string::npos) << e.what();
  }
}

// Checked before the tokenizer loads and before any prompt is built: a length past the model's positions, and a
// model directory that does not exist (it used to be reported as a missing tokenizer file).
TEST(RulerEval, LengthsAndTheModelDirectoryAreCheckedFirst) {
  rtp::eval::RulerEvalOptions o;
  o.model_dir = std::string(RTP_SOURCE_DIR) + "/data/fixtures/models/qwen3-tiny";  // max_position_embeddings 512
  o.tasks = {"vt"};
  o.lengths = {256, 50000};
  rtp::RunContext ctx;
  std::string e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(o, ctx); });
  EXPECT_NE(e.find("length 50000 exceeds the model's max_position_embeddings 512"), std::string::npos) << e;
  o.model_dir += "-missing";
  e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(o, ctx); });
  EXPECT_NE(e.find("model directory '" + o.model_dir + "' does not exist"), std::string::npos) << e;
}

// A tiny random base model with the Qwen3 vocabulary in dir/base, and dir/conv converted from it: layer 1's KV head
// retrieves (with a random indexer when `indexer`), layer 0's streams (sink 4, window 128).
rtp::model::Qwen3Model make_tiny_converted(const std::string& dir, bool indexer) {
  rtp::make_directories(dir + "/base");
  rtp::model::ModelConfig c;
  c.vocab_size = 151936;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.max_position_embeddings = 4096;
  c.tie_word_embeddings = true;
  rtp::model::Qwen3Model model(c);
  model.init_random(5, 0.5);
  rtp::model::save_qwen3(model, dir + "/base");
  auto heads = rtp::sparse::HeadMap::all_streaming(2, 1, 2);
  heads.retrieval[1][0] = 1;
  rtp::sparse::SparseSettings st;
  st.sink = 4;
  st.window = 128;
  st.dense_below = 0;
  if (indexer) {
    rtp::sparse::Indexer ix(heads, c.head_dim, 16);
    ix.q_proj(1).normal_(0, 0.3);
    ix.k_proj(1).normal_(0, 0.3);
    rtp::sparse::export_converted({dir + "/base", dir + "/conv", false}, heads, st, ix);
  } else {
    rtp::sparse::export_converted({dir + "/base", dir + "/conv", false}, heads, st, rtp::sparse::Indexer{});
  }
  return model;
}

// What the run would refuse later is refused before any sample runs (and before the output directory is made): a
// task that does not fit a length, a repeated task, a converted model without the indexer its retrieval heads need,
// a prefill chunk that is not a multiple of the block size.
TEST(RulerEval, RefusedBeforeAnySampleRuns) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  const std::string dir = std::string(RTP_BINARY_DIR) + "/tmp-ruler-refused-" + std::to_string(::getpid());
  make_tiny_converted(dir, false);
  rtp::eval::RulerEvalOptions o;
  o.model_dir = dir + "/conv";
  o.tokenizer = kTokenizer;
  o.tasks = {"vt", "cwe"};
  o.lengths = {1024, 512};  // cwe needs more than 512
  o.samples = 1;
  o.out_dir = dir + "/out";
  rtp::RunContext ctx;
  auto refused = [&](const rtp::eval::RulerEvalOptions& opts, const std::string& expected) {
    testing::internal::CaptureStderr();
    const std::string e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(opts, ctx); });
    const std::string progress = testing::internal::GetCapturedStderr();
    EXPECT_NE(e.find(expected), std::string::npos) << e;
    EXPECT_EQ(progress.find("sample 1/1"), std::string::npos) << "samples ran first:\n" << progress;
    EXPECT_FALSE(rtp::directory_exists(opts.out_dir)) << opts.out_dir;
  };
  refused(o, "RULER task 'cwe' does not fit max_seq_length 512");
  o.lengths = {1024};
  refused(o, "has 1 retrieval KV heads but no indexer.safetensors");
  o.dense = false;
  refused(o, "has 1 retrieval KV heads but no indexer.safetensors");
  o.dense = true;
  o.sparse = false;  // dense only: the missing indexer does not matter, and the run goes through
  o.prefill_chunk = 100;
  rtp::eval::run_ruler_eval(o, ctx);
  EXPECT_TRUE(rtp::read_json_file(o.out_dir + "/ruler.json")["finished"].get<bool>());
  rtp::remove_tree(dir);

  make_tiny_converted(dir, true);
  o.sparse = true;
  refused(o, "--prefill-chunk 100 is not a multiple of the converted model's block size 64");
  EXPECT_THROW(rtp::eval::parse_ruler_tasks("ruler:vt,ruler:cwe,vt"), rtp::Error);
  rtp::remove_tree(dir);
}

// The whole path on the CPU: a tiny random model with the Qwen3 vocabulary, exported with one retrieval head (random
// indexer) and the rest streaming, evaluated dense and sparse with chunked prefill; then the dense model with an
// end-of-sequence token that it produces, which must end generation there.
TEST(RulerEval, EndToEndOnATinyModelWithTheQwen3Vocabulary) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  const std::string dir = std::string(RTP_BINARY_DIR) + "/tmp-ruler-e2e-" + std::to_string(::getpid());
  auto model = make_tiny_converted(dir, true);
  const auto& c = model.config();
  rtp::sparse::SparseSettings st;
  st.sink = 4;
  st.dense_below = 0;

  // The same model with every head streaming and a window past every position: sparse in form, dense in effect.
  const auto all_streaming = rtp::sparse::HeadMap::all_streaming(2, 1, 2);
  rtp::sparse::SparseSettings wide = st;
  wide.window = 2048;
  rtp::sparse::export_converted({dir + "/base", dir + "/wide", false}, all_streaming, wide,
                                rtp::sparse::Indexer(all_streaming, c.head_dim, 16));

  rtp::eval::RulerEvalOptions o;
  o.model_dir = dir + "/conv";
  o.tokenizer = kTokenizer;
  o.tasks = {"niah_single_1"};
  o.lengths = {1024};
  o.samples = 1;
  o.prefill_chunk = 256;
  o.out_dir = dir + "/out";
  rtp::RunContext ctx;
  rtp::eval::run_ruler_eval(o, ctx);
  const auto doc = rtp::read_json_file(o.out_dir + "/ruler.json");
  ASSERT_EQ(doc["results"].size(), 1u);
  const auto& row = doc["results"][0];
  const auto tok = rtp::text::Tokenizer::from_file(kTokenizer);
  rtp::text::ruler::RulerOptions ro;
  ro.seed = ctx.seed;
  ro.max_seq_length = 1024;
  const auto sample = rtp::text::ruler::generate_sample("niah_single_1", tok, ro, 0);

  // The dense model's greedy tokens, prefilled in one forward (the eval prefills in chunks of 256).
  auto ids = torch::tensor(std::vector<int64_t>(sample.prompt_ids.begin(), sample.prompt_ids.end())).view({1, -1});
  const int64_t n = sample.tokens_to_generate;
  const auto free_run = rtp::model::generate_greedy(model, ids, n, {}, ids.size(1)).narrow(1, ids.size(1), n);
  std::vector<int32_t> free_tokens;
  for (int64_t i = 0; i < n; ++i) free_tokens.push_back(static_cast<int32_t>(free_run[0][i].item<int64_t>()));
  const std::string reference = tok.decode(free_tokens, true);

  ASSERT_EQ(row["per_sample"].size(), 1u);
  const auto& out = row["per_sample"][0];
  EXPECT_EQ(out["answers"].get<std::vector<std::string>>(), sample.answers);
  EXPECT_EQ(out["dense_prediction"].get<std::string>(), reference);
  for (const char* mode : {"dense", "sparse"}) {
    const std::string m(mode);
    EXPECT_EQ(row[m + "_generated_tokens"].get<int64_t>(), n) << m;  // no eos in this config
    // The score is the scorer's on the prediction, and the accuracy of one sample is that score.
    const double score = rtp::text::ruler::score(sample, out[m + "_prediction"].get<std::string>());
    EXPECT_EQ(out[m + "_score"].get<double>(), score) << m;
    EXPECT_EQ(row[m + "_accuracy"].get<double>(), score) << m;
  }
  // The caches hold the prompt and every generated token but the last (never fed back): 1023 tokens. Dense: k and v
  // of 2 layers x 1 KV head x 16 floats. Sparse, layer 0: its KV head streams (sink + window = 132 tokens); layer 1:
  // its KV head retrieves (k, v and 16 index-key floats per token).
  const int64_t held = static_cast<int64_t>(sample.prompt_ids.size()) + n - 1;
  ASSERT_EQ(held, 1023);
  EXPECT_EQ(row["dense_kv_bytes"].get<int64_t>(), 2 * 1 * held * 2 * 16 * 4);
  EXPECT_EQ(row["sparse_kv_bytes_per_layer"], nlohmann::json::array({132 * 2 * 16 * 4, held * (2 * 16 + 16) * 4}));
  EXPECT_EQ(row["sparse_kv_bytes"].get<int64_t>(), 132 * 2 * 16 * 4 + held * (2 * 16 + 16) * 4);

  // Dense in effect: the sparse path must produce the dense model's tokens.
  {
    rtp::eval::RulerEvalOptions w = o;
    w.model_dir = dir + "/wide";
    w.dense = false;
    w.out_dir = dir + "/out-wide";
    rtp::eval::run_ruler_eval(w, ctx);
    const auto wide_doc = rtp::read_json_file(w.out_dir + "/ruler.json");
    EXPECT_EQ(wide_doc["results"][0]["per_sample"][0]["sparse_prediction"].get<std::string>(), reference);
    EXPECT_FALSE(wide_doc["results"][0].contains("dense_accuracy"));
  }

  // The dense model's 3rd greedy token becomes the end-of-sequence token.
  const int64_t eos = free_run[0][2].item<int64_t>();
  int64_t expected = 1;
  while (free_run[0][expected - 1].item<int64_t>() != eos) ++expected;  // its first occurrence ends generation
  { std::ofstream(o.model_dir + "/generation_config.json") << "{\"eos_token_id\": [" << eos << "]}"; }
  o.sparse = false;
  rtp::eval::run_ruler_eval(o, ctx);
  const auto stopped = rtp::read_json_file(o.out_dir + "/ruler.json");
  EXPECT_EQ(stopped["stop_token_ids"], nlohmann::json::array({eos}));
  EXPECT_EQ(stopped["results"][0]["dense_generated_tokens"].get<int64_t>(), expected);
  rtp::remove_tree(dir);
}

// An evaluation stopped after any sample and resumed gives the uninterrupted run's results (timings aside): the
// same rows, predictions, scores, accuracies and cache bytes, and the same prompts dumped. Stopped mid-row and at a
// row's end; an unfinished evaluation is not overwritten without --resume, and --resume refuses other settings and a
// finished evaluation.
TEST(RulerEval, StoppedAndResumedEqualsTheUninterruptedRun) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found at " << kTokenizer;
  const std::string dir = std::string(RTP_BINARY_DIR) + "/tmp-ruler-resume-" + std::to_string(::getpid());
  make_tiny_converted(dir, true);
  rtp::eval::RulerEvalOptions o;
  o.model_dir = dir + "/conv";
  o.tokenizer = kTokenizer;
  o.tasks = {"niah_single_1", "vt"};
  o.lengths = {512};
  o.samples = 3;
  o.prefill_chunk = 256;
  o.out_dir = dir + "/whole";
  o.dump_prompts = dir + "/whole.jsonl";
  rtp::RunContext ctx;
  testing::internal::CaptureStderr();
  rtp::eval::run_ruler_eval(o, ctx);
  const auto whole = rtp::read_json_file(o.out_dir + "/ruler.json");

  o.out_dir = dir + "/parts";
  o.dump_prompts = dir + "/parts.jsonl";
  o.stop_after_samples = 2;  // stops inside the first row
  rtp::eval::run_ruler_eval(o, ctx);
  auto doc = rtp::read_json_file(o.out_dir + "/ruler.json");
  EXPECT_FALSE(doc["finished"].get<bool>());
  EXPECT_EQ(doc["results"].size(), 0u);
  EXPECT_EQ(doc["in_progress"]["per_sample"].size(), 2u);
  EXPECT_FALSE(rtp::file_exists(o.dump_prompts)) << "a stopped run wrote a partial prompt dump";
  // Not overwritten by a fresh start.
  std::string e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(o, ctx); });
  EXPECT_NE(e.find("holds an evaluation that did not finish (0 (task, length) rows done, 2 samples of niah_single_1 @512)"),
            std::string::npos) << e;
  EXPECT_NE(e.find("pass --resume to continue it"), std::string::npos) << e;
  // Other settings are refused, each named with both values.
  o.resume = true;
  o.samples = 4;
  o.prefill_chunk = 128;
  e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(o, ctx); });
  EXPECT_NE(e.find("samples: was 3, now 4"), std::string::npos) << e;
  EXPECT_NE(e.find("prefill_chunk: was 256, now 128"), std::string::npos) << e;
  o.samples = 3;
  o.prefill_chunk = 256;
  o.stop_after_samples = 1;  // the first row's last sample, then stops at the second row's start
  rtp::eval::run_ruler_eval(o, ctx);
  doc = rtp::read_json_file(o.out_dir + "/ruler.json");
  EXPECT_FALSE(doc["finished"].get<bool>());
  EXPECT_EQ(doc["results"].size(), 1u);
  EXPECT_FALSE(doc.contains("in_progress"));
  o.stop_after_samples = 0;
  rtp::eval::run_ruler_eval(o, ctx);
  const std::string progress = testing::internal::GetCapturedStderr();
  EXPECT_NE(progress.find("resuming"), std::string::npos) << progress;
  const auto parts = rtp::read_json_file(o.out_dir + "/ruler.json");
  EXPECT_TRUE(parts["finished"].get<bool>());
  EXPECT_FALSE(parts.contains("in_progress"));
  ASSERT_EQ(parts["results"].size(), whole["results"].size());
  for (size_t r = 0; r < whole["results"].size(); ++r) {
    const auto& a = whole["results"][r];
    const auto& b = parts["results"][r];
    for (const char* key : {"task", "length", "dense_accuracy", "sparse_accuracy", "dense_generated_tokens",
                            "sparse_generated_tokens", "dense_kv_bytes", "sparse_kv_bytes", "sparse_kv_bytes_per_layer",
                            "sparse_attended_fraction_per_layer", "per_sample"})
      EXPECT_EQ(a[key], b[key]) << "row " << r << ", " << key;
  }
  EXPECT_EQ(rtp::read_text_file(dir + "/parts.jsonl"), rtp::read_text_file(dir + "/whole.jsonl"));
  // A finished evaluation is not resumed; without --resume it is replaced.
  e = rtp::testing::error_of([&] { rtp::eval::run_ruler_eval(o, ctx); });
  EXPECT_NE(e.find("holds a finished evaluation: nothing to continue"), std::string::npos) << e;
  rtp::remove_tree(dir);
}

}  // namespace
