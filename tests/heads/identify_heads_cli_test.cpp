// Runs the built rtpurbo-identify-heads: every flag is checked before the calibration pass, with messages that
// name the flag; a good command line writes the profile the library computes, with the heads its rule selects.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "rtp/heads/calibration.h"
#include "rtp/heads/head_profile.h"
#include "rtp/model/qwen3.h"
#include "tool_cli.h"

namespace {

const std::string kModel = RTP_SOURCE_DIR "/data/fixtures/models/qwen3-tiny";  // 3 layers, 4 query / 2 KV heads

class IdentifyHeadsCli : public rtp::testing::ToolCliTest {
 protected:
  IdentifyHeadsCli() : ToolCliTest("rtpurbo-identify-heads") {}
  // The tool on a small calibration run plus `extra`.
  rtp::testing::ToolRun run(const std::string& extra) const { return run_args("--calibration toy " + extra); }
  // The same without --calibration toy.
  rtp::testing::ToolRun run_args(const std::string& extra) const {
    return run_tool("--model " + kModel + " --out " + dir_ + "/h.h5 --seq-len 64 --num-sequences 1 " + extra);
  }
};

TEST_F(IdentifyHeadsCli, FlagsAreCheckedBeforeCalibrationAndNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {"--retrieval-fraction 1.5", "--retrieval-fraction '1.5' is not valid: expected a number in (0, 1]"},
      {"--retrieval-fraction 0", "--retrieval-fraction '0' is not valid"},
      {"--retrieval-fraction 0.15x", "--retrieval-fraction '0.15x' is not valid"},
      {"--kv-budget 0.5", "--kv-budget '0.5' is a number of bytes"},
      {"--aggregation median", "--aggregation 'median' is not valid: expected max or mean"},
      {"--window 0", "--window '0' is not valid: expected an integer >= 1"},
      {"--sink -1", "--sink '-1' is not valid"},
      {"--chunk-rows 0", "--chunk-rows '0' is not valid"},
      {"--kv-budget 1G --budget-context 0", "--budget-context '0' is not valid"},
      {"--budget-context 4096", "--budget-context is read with --kv-budget only"},
      {"--retrieval-fraction 0.5 --budget-context 4096", "--budget-context is read with --kv-budget only"},
      {"extra.h5", "unexpected argument 'extra.h5'"},
      // Choices and the library-parsed values are command-line mistakes too (they exited 1, after the model loaded).
      {"--calibration bogus", "--calibration 'bogus' is not valid: expected toy or text"},
      {"--dtype int8", "--dtype 'int8': unknown dtype 'int8': expected float32, bfloat16 or float16"},
      {"--device gpu", "--device 'gpu' is not valid: expected cpu, cuda, cuda:N or auto"},
      {"--text notes.txt", "--text is read by text calibration only, and --calibration is toy"},
  };
  for (const auto& [flags, message] : cases) {
    const auto r = run(flags);
    expect_usage_error(r, message, flags);
    EXPECT_EQ(r.err.find("sequence 1/1"), std::string::npos) << flags << ": the calibration ran";
  }
  // A budget below one head's cache quotes the value given (it used to say "0 bytes" for 0.5).
  auto r = run("--kv-budget 100");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--kv-budget '100' (100 bytes) holds no retrieval KV head"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("sequence 1/1"), std::string::npos) << r.err;
  // An --svg that cannot be written is found before the calibration too.
  rtp::write_file_atomic(dir_ + "/afile", "x");
  r = run("--svg " + dir_ + "/afile/h.svg");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--svg '" + dir_ + "/afile/h.svg'"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("sequence 1/1"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));
}

// Outputs and inputs that are not what they must be are found before the model loads, and nothing is written: an
// --svg in a directory that takes no files (/proc, where root's access() check says yes) used to fail after the
// profile had been written; a --text directory used to read as an empty text ("has no tokens").
TEST_F(IdentifyHeadsCli, PathsAreCheckedBeforeAnythingIsWritten) {
  auto r = run("--svg /proc/rtpurbo-identify-heads-cli.svg");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--svg '/proc/rtpurbo-identify-heads-cli.svg': cannot create files in directory '/proc'"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("sequence 1/1"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));

  r = run_args("--text " + dir_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--text '" + dir_ + "' is a directory, expected a UTF-8 text file"), std::string::npos)
      << r.err;
  r = run_args("--text " + dir_ + "/missing.txt");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--text '" + dir_ + "/missing.txt' does not exist"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));
}

// The picture written over the profile left exit status 0 and no profile: --svg equal to --out, spelled either way,
// and an --out ending in .svg (whose default picture is itself) are refused; an empty path is refused up front.
TEST_F(IdentifyHeadsCli, ThePictureNeverOverwritesTheProfile) {
  const std::string out = dir_ + "/p.h5";
  auto r = run_tool("--model " + kModel + " --out " + out + " --svg " + dir_ + "/./p.h5 --calibration toy --seq-len 64 "
                    "--num-sequences 1");
  expect_usage_error(r, "--svg '" + dir_ + "/./p.h5' is the --out file: give the profile a .h5 name, or --svg another "
                     "path", "--svg = --out");
  r = run_tool("--model " + kModel + " --out " + dir_ + "/p.svg --calibration toy --seq-len 64 --num-sequences 1");
  expect_usage_error(r, "is the --out file (the default picture of an --out ending in .svg)", "--out p.svg");
  r = run("--svg ''");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--svg is empty: expected a file path"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(out));
  EXPECT_FALSE(rtp::file_exists(dir_ + "/p.svg"));
}

// Calibration text that is not UTF-8 is named by file and offset; a --sink that leaves no long-range key (every
// score would be 0, exit 0) is refused.
TEST_F(IdentifyHeadsCli, BadTextAndAnEmptyLongRangeAreNamed) {
  rtp::write_file_atomic(dir_ + "/bad.txt", std::string("caf\xC3\xA9 ok \xFF tail"));
  auto r = run_args("--calibration text --tokenizer " RTP_SOURCE_DIR "/data/fixtures/tokenizer/qwen3 --text " + dir_ +
                    "/bad.txt");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--text '" + dir_ + "/bad.txt': invalid UTF-8 at byte offset 9 (byte 0xFF)"), std::string::npos)
      << r.err;
  r = run("--sink 60 --window 8");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--sink 60 + --window 8 must be shorter than --seq-len 64"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));
}

// What the library scores for the calibration of run(): one toy sequence of 64 tokens from the default seed 1234 with
// the default span clamp(64 / 8, 8, 256) = 8, on the tiny model in float32 on the CPU (the tool's defaults).
rtp::heads::HeadScores library_scores(int64_t window, int64_t sink) {
  auto model = rtp::model::load_qwen3(kModel, torch::kCPU, torch::kFloat32);
  rtp::heads::CalibrationSpec spec;
  spec.source = "toy";
  spec.vocab_size = model.config().vocab_size;
  spec.num_sequences = 1;
  spec.seq_len = 64;
  spec.span_len = 8;
  spec.seed = 1234;
  rtp::heads::ScoreOptions so;
  so.window = window;
  so.sink = sink;
  return rtp::heads::score_model_heads(model, rtp::heads::make_calibration_sequences(spec), so);
}

// KV head a ([layer, kv head] index) ranks before KV head b by the rule of docs/heads.md, "Selection": retrieval
// score, ties by long-range mass, then index.
bool outranks(const rtp::heads::HeadProfile& p, int64_t a, int64_t b) {
  if (p.kv_retrieval[a] != p.kv_retrieval[b]) return p.kv_retrieval[a] > p.kv_retrieval[b];
  if (p.kv_long_range[a] != p.kv_long_range[b]) return p.kv_long_range[a] > p.kv_long_range[b];
  return a < b;
}

// What a profile of run() holds whatever the selection rule: the model's shape, the derived calibration settings,
// the library's scores for them, KV scores that are the max over each GQA group (--aggregation max), `n_kv` selected
// KV heads that outrank every other, and the query heads those imply.
void expect_profile(const rtp::heads::HeadProfile& p, int64_t window, int64_t sink, int64_t n_kv) {
  ASSERT_EQ(p.num_layers, 3);
  ASSERT_EQ(p.num_q_heads, 4);
  ASSERT_EQ(p.num_kv_heads, 2);
  const auto& s = p.settings;
  EXPECT_EQ(s.model_dir, kModel);
  EXPECT_EQ(s.calibration, "toy");
  EXPECT_EQ(s.text_source, "");
  EXPECT_EQ(s.num_sequences, 1);
  EXPECT_EQ(s.seq_len, 64);
  EXPECT_EQ(s.span_len, 8);
  EXPECT_EQ(s.window, window);
  EXPECT_EQ(s.sink, sink);
  EXPECT_EQ(s.seed, 1234u);
  EXPECT_EQ(s.aggregation, "max");
  EXPECT_FALSE(s.per_query_head);
  EXPECT_EQ(s.dtype, "float32");
  EXPECT_EQ(s.format_version, rtp::heads::kHeadProfileFormatVersion);
  EXPECT_EQ(s.tool_version, rtp::heads::kHeadsToolVersion);

  const auto lib = library_scores(window, sink);
  ASSERT_EQ(p.retrieval.size(), 12u);
  ASSERT_EQ(lib.retrieval.size(), 12u);
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_NEAR(p.retrieval[i], lib.retrieval[i], 1e-6) << "query head " << i;
    EXPECT_NEAR(p.long_range[i], lib.long_range[i], 1e-6) << "query head " << i;
    EXPECT_NEAR(p.copy[i], lib.copy[i], 1e-6) << "query head " << i;
    EXPECT_NEAR(p.induction[i], lib.induction[i], 1e-6) << "query head " << i;
  }
  ASSERT_EQ(p.kv_retrieval.size(), 6u);
  ASSERT_EQ(p.kv_long_range.size(), 6u);
  ASSERT_EQ(p.selected_kv.size(), 6u);
  ASSERT_EQ(p.selected_q.size(), 12u);
  for (int64_t kv = 0; kv < 6; ++kv) {
    EXPECT_EQ(p.kv_retrieval[kv], std::max(p.retrieval[2 * kv], p.retrieval[2 * kv + 1])) << "KV head " << kv;
    EXPECT_EQ(p.kv_long_range[kv], std::max(p.long_range[2 * kv], p.long_range[2 * kv + 1])) << "KV head " << kv;
  }
  EXPECT_EQ(std::count(p.selected_kv.begin(), p.selected_kv.end(), 1), n_kv);
  for (int64_t a = 0; a < 6; ++a)
    for (int64_t b = 0; b < 6; ++b)
      if (p.selected_kv[a] && !p.selected_kv[b])
        EXPECT_TRUE(outranks(p, a, b)) << "selected KV head " << a << " (retrieval " << p.kv_retrieval[a]
                                       << ") does not outrank unselected " << b << " (" << p.kv_retrieval[b] << ")";
  for (int64_t q = 0; q < 12; ++q) EXPECT_EQ(p.selected_q[q], p.selected_kv[q / 2]) << "query head " << q;
}

// Defaults: window min(64 / 4, 8192) = 16, sink 4; --retrieval-fraction 0.34 keeps round(0.34 x 6) = 2 KV heads.
TEST_F(IdentifyHeadsCli, GoodCommandLineWritesTheProfile) {
  const auto r = run("--retrieval-fraction 0.34");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(rtp::file_exists(dir_ + "/h.svg"));
  const auto p = rtp::heads::load_head_profile(dir_ + "/h.h5");
  EXPECT_EQ(p.settings.selection_rule, "fraction");
  EXPECT_DOUBLE_EQ(p.settings.selection_value, 0.34);
  EXPECT_EQ(p.settings.budget_context, 0);
  expect_profile(p, 16, 4, 2);
  EXPECT_NE(r.out.find("selected 2 of 6 KV heads (33.3%), 4 of 12 query heads; rule: fraction 0.34 of KV heads"),
            std::string::npos) << r.out;
}

// One KV head's full cache costs budget_context (default: max_position_embeddings 512) x 2 (K, V) x head_dim 32 x 4
// bytes (float32) = 128 KiB, so --kv-budget 400K (409600 bytes) holds 3 of the 6; --window and --sink reach the
// scores.
TEST_F(IdentifyHeadsCli, KvBudgetSelectsTheHeadsItHolds) {
  const auto r = run("--kv-budget 400K --window 20 --sink 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto p = rtp::heads::load_head_profile(dir_ + "/h.h5");
  EXPECT_EQ(p.settings.selection_rule, "kv_budget");
  EXPECT_DOUBLE_EQ(p.settings.selection_value, 409600);
  EXPECT_EQ(p.settings.budget_context, 512);
  expect_profile(p, 20, 2, 3);
  EXPECT_NE(r.out.find("selected 3 of 6 KV heads (50.0%), 6 of 12 query heads; rule: kv_budget 409600 bytes = 3 KV "
                       "heads of 131072 bytes (512 tokens x 2 x head_dim 32 x 4 bytes)"),
            std::string::npos) << r.out;
}

}  // namespace
