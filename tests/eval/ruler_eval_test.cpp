#include <gtest/gtest.h>

#include <cstdio>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/eval/ruler_eval.h"
#include "test_util.h"

namespace {

const char* kTokenizer = RTP_SOURCE_DIR "/../shared/data/qwen3-tokenizer/tokenizer.json";

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
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  rtp::eval::RulerEvalOptions o;
  o.tokenizer = kTokenizer;
  o.tasks = {"niah_single_1", "fwe"};
  o.lengths = {1024, 2048};
  o.samples = 2;
  o.dump_prompts = std::string(RTP_BINARY_DIR) + "/tmp-ruler-prompts.jsonl";
  rtp::RunContext ctx;
  rtp::eval::run_ruler_eval(o, ctx);
  std::ifstream in(o.dump_prompts);
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(j.contains("input") && j.contains("outputs") && j.contains("tokens_to_generate"));
  }
  EXPECT_EQ(lines, 2 * 2 * 2);
}

// An essay task later in the list is refused before the tasks before it run (it failed after them).
TEST(RulerEval, EssayTaskWithoutEssayIsRefusedBeforeAnyWork) {
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
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
  if (!std::ifstream(kTokenizer).good()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
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

}  // namespace
