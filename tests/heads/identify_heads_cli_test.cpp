// Runs the built rtpurbo-identify-heads: every flag is checked before the calibration pass, with messages that
// name the flag; a good command line still writes the profile.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "rtp/core/file_io.h"

namespace {

const std::string kTool = RTP_BINARY_DIR "/bin/rtpurbo-identify-heads";
const std::string kModel = RTP_SOURCE_DIR "/data/fixtures/models/qwen3-tiny";

class IdentifyHeadsCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rtp::file_exists(kTool)) << kTool << " is missing: build the rtpurbo-identify-heads target first";
    dir_ = RTP_BINARY_DIR "/tmp-identify-heads-cli-" + std::to_string(::getpid());
    rtp::make_directories(dir_);
  }
  void TearDown() override { rtp::remove_tree(dir_); }
  // Exit code and stderr of the tool on a small calibration run plus `extra`.
  std::pair<int, std::string> run(const std::string& extra) const {
    return run_args("--calibration toy " + extra);
  }
  // The same without --calibration toy.
  std::pair<int, std::string> run_args(const std::string& extra) const {
    const std::string err = dir_ + "/stderr.txt";
    const std::string cmd = kTool + " --model " + kModel + " --out " + dir_ + "/h.h5 --seq-len 64 "
                            "--num-sequences 1 " + extra + " > /dev/null 2> " + err;
    const int st = std::system(cmd.c_str());
    return {WEXITSTATUS(st), rtp::read_text_file(err)};
  }
  std::string dir_;
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
    const auto [rc, err] = run(flags);
    EXPECT_EQ(rc, 2) << flags << ": " << err;
    EXPECT_NE(err.find(message), std::string::npos) << flags << ": " << err;
    EXPECT_EQ(err.find("sequence 1/1"), std::string::npos) << flags << ": the calibration ran";
  }
  // A budget below one head's cache quotes the value given (it used to say "0 bytes" for 0.5).
  auto [rc, err] = run("--kv-budget 100");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("--kv-budget '100' (100 bytes) holds no retrieval KV head"), std::string::npos) << err;
  EXPECT_EQ(err.find("sequence 1/1"), std::string::npos) << err;
  // An --svg that cannot be written is found before the calibration too.
  rtp::write_file_atomic(dir_ + "/afile", "x");
  std::tie(rc, err) = run("--svg " + dir_ + "/afile/h.svg");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(err.find("--svg '" + dir_ + "/afile/h.svg'"), std::string::npos) << err;
  EXPECT_EQ(err.find("sequence 1/1"), std::string::npos) << err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));
}

// Outputs and inputs that are not what they must be are found before the model loads, and nothing is written: an
// --svg in a directory that takes no files (/proc, where root's access() check says yes) used to fail after the
// profile had been written; a --text directory used to read as an empty text ("has no tokens").
TEST_F(IdentifyHeadsCli, PathsAreCheckedBeforeAnythingIsWritten) {
  auto [rc, err] = run("--svg /proc/rtpurbo-identify-heads-cli.svg");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--svg '/proc/rtpurbo-identify-heads-cli.svg': cannot create files in directory '/proc'"),
            std::string::npos) << err;
  EXPECT_EQ(err.find("sequence 1/1"), std::string::npos) << err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));

  std::tie(rc, err) = run_args("--text " + dir_);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--text '" + dir_ + "' is a directory, expected a UTF-8 text file"), std::string::npos) << err;
  std::tie(rc, err) = run_args("--text " + dir_ + "/missing.txt");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--text '" + dir_ + "/missing.txt' does not exist"), std::string::npos) << err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/h.h5"));
}

TEST_F(IdentifyHeadsCli, GoodCommandLineWritesTheProfile) {
  const auto [rc, err] = run("--retrieval-fraction 0.34 --window 16");
  ASSERT_EQ(rc, 0) << err;
  EXPECT_TRUE(rtp::file_exists(dir_ + "/h.h5"));
  EXPECT_TRUE(rtp::file_exists(dir_ + "/h.svg"));
}

}  // namespace
