// Runs the built rtpurbo-identify-heads: every flag is checked before the calibration pass, with messages that
// name the flag; a good command line still writes the profile.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

const std::string kModel = RTP_SOURCE_DIR "/data/fixtures/models/qwen3-tiny";

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
      {"extra.h5", "unexpected argument 'extra.h5'"},
      // Choices and the library-parsed values are command-line mistakes too (they exited 1, after the model loaded).
      {"--calibration bogus", "--calibration 'bogus' is not valid: expected toy or text"},
      {"--dtype int8", "--dtype 'int8': unknown dtype 'int8': expected float32, bfloat16 or float16"},
      {"--device gpu", "--device 'gpu' is not valid: expected cpu, cuda, cuda:N or auto"},
      {"--text notes.txt", "--text is read by text calibration only, and --calibration is toy"},
  };
  for (const auto& [flags, message] : cases) {
    const auto r = run(flags);
    EXPECT_EQ(r.rc, 2) << flags << ": " << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << flags << ": " << r.err;
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

TEST_F(IdentifyHeadsCli, GoodCommandLineWritesTheProfile) {
  const auto r = run("--retrieval-fraction 0.34 --window 16");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(rtp::file_exists(dir_ + "/h.h5"));
  EXPECT_TRUE(rtp::file_exists(dir_ + "/h.svg"));
}

}  // namespace
