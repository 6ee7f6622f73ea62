// Runs the built rtpurbo-bench (CUDA builds only; the test skips where it is not built). Its command line is read
// and checked before the CUDA device is touched, so these cases need no GPU: the strict parser of the other tools
// (stray arguments, numbers with trailing characters, ranges: --reps 0 took the median of no timings), -h, and an
// --out where the results file cannot be made (it was written unchecked after all the timing).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"

namespace {

const std::string kTool = RTP_BINARY_DIR "/bin/rtpurbo-bench";

class BenchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!rtp::file_exists(kTool)) GTEST_SKIP() << kTool << " is not built (a CUDA-only tool: RTPURBO_WITH_CUDA)";
    dir_ = RTP_BINARY_DIR "/tmp-bench-cli-" + std::to_string(::getpid());
    rtp::remove_tree(dir_);
    rtp::make_directories(dir_);
  }
  void TearDown() override { rtp::remove_tree(dir_); }
  std::pair<int, std::string> run(const std::string& args) const {
    const std::string err = dir_ + "/stderr.txt";
    const int st = std::system((kTool + " " + args + " > " + dir_ + "/stdout.txt 2> " + err).c_str());
    return {WEXITSTATUS(st), rtp::read_text_file(err)};
  }
  std::string dir_;
};

TEST_F(BenchCli, CommandLineIsStrictAndCheckedFirst) {
  const std::pair<const char*, const char*> cases[] = {
      {"--reps 0", "--reps '0' is not valid: expected an integer in [1, "},
      {"--reps -1", "--reps '-1' is not valid"},
      {"stray", "unexpected argument 'stray'"},
      {"--ret-fraction 0.15x", "--ret-fraction '0.15x' is not valid: expected a number in [0, 0.25]"},
      {"--ret-fraction 0.5", "--ret-fraction '0.5' is not valid"},
      {"--lengths 32768,", "--lengths: expected comma-separated positive integers, found '32768,'"},
      {"--decode-kept 0", "--decode-kept '0' is not valid: expected a number in (0, 1]"},
      {"--decode-step-layers 65", "--decode-step-layers '65' is not valid: expected an integer in [0, 64]"},
      {"--prefill-kernel foo", "--prefill-kernel 'foo' is not valid: expected auto, wgmma_ws, wgmma or mma_sync"},
      {"--lengths 32768 --baseline-max 100", "--baseline-max 100 is below the shortest --lengths value 32768"},
      {"--reps-count 3", "unknown option '--reps-count'"},
  };
  for (const auto& [flags, message] : cases) {
    const auto [rc, err] = run(flags);
    EXPECT_EQ(rc, 2) << flags << ": " << err;
    EXPECT_NE(err.find(message), std::string::npos) << flags << ": " << err;
  }
  // -h like --help, like every other tool
  const auto [rc, err] = run("-h");
  EXPECT_EQ(rc, 0) << err;
  EXPECT_NE(rtp::read_text_file(dir_ + "/stdout.txt").find("--decode-step-layers"), std::string::npos);
}

TEST_F(BenchCli, OutputDirectoryIsCheckedBeforeTheDevice) {
  rtp::write_file_atomic(dir_ + "/afile", "x");
  auto [rc, err] = run("--out " + dir_ + "/afile/results");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--out '" + dir_ + "/afile/results': '" + dir_ + "/afile' is a file, expected a directory"),
            std::string::npos) << err;
  std::tie(rc, err) = run("--out /proc/rtpurbo-bench-results");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--out '/proc/rtpurbo-bench-results': cannot create files in '/proc'"), std::string::npos) << err;
  EXPECT_EQ(err.find("no CUDA device"), std::string::npos) << err;
}

}  // namespace
