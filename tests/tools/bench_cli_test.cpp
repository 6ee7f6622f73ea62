// Runs the built rtpurbo-bench (CUDA builds only; the test skips where it is not built). Its command line is read
// and checked before the CUDA device is touched, so these cases need no GPU: the strict parser of the other tools
// (stray arguments, numbers with trailing characters, ranges: --reps 0 took the median of no timings), -h, and an
// --out where the results file cannot be made (it was written unchecked after all the timing).
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

class BenchCli : public rtp::testing::ToolCliTest {
 protected:
  BenchCli() : ToolCliTest("rtpurbo-bench", "a CUDA-only tool: RTPURBO_WITH_CUDA") {}
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
    const auto r = run_tool(flags);
    expect_usage_error(r, message, flags);
  }
  // -h like --help, like every other tool
  const auto r = run_tool("-h");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("--decode-step-layers"), std::string::npos);
}

TEST_F(BenchCli, OutputDirectoryIsCheckedBeforeTheDevice) {
  rtp::write_file_atomic(dir_ + "/afile", "x");
  auto r = run_tool("--out " + dir_ + "/afile/results");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--out '" + dir_ + "/afile/results': '" + dir_ + "/afile' is a file, expected a directory"),
            std::string::npos) << r.err;
  r = run_tool("--out /proc/rtpurbo-bench-results");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--out '/proc/rtpurbo-bench-results': cannot create files in '/proc'"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("no CUDA device"), std::string::npos) << r.err;
}

}  // namespace
