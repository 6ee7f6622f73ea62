#pragma once
// Running a built tool (RTP_BINARY_DIR/bin/<tool>) from a test: a fixture that checks the tool is there, gives each
// test a fresh scratch directory (RTP_BINARY_DIR/tmp-<tool>-<pid>, removed after the test) and runs the tool with
// its stdout and stderr caught in files there.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"

namespace rtp::testing {

// What one run of a tool gave.
struct ToolRun {
  int rc = -1;      // exit status
  std::string out;  // stdout
  std::string err;  // stderr
};

class ToolCliTest : public ::testing::Test {
 protected:
  // `tool`: the target name (e.g. "rtpurbo-export"). A missing tool fails each test naming the target to build
  // (the tests depend on their tools, tests/CMakeLists.txt), unless `skip_reason` says why it may be absent: then
  // the tests skip.
  explicit ToolCliTest(std::string tool, std::string skip_reason = "")
      : tool_name_(std::move(tool)), tool_(RTP_BINARY_DIR "/bin/" + tool_name_), skip_reason_(std::move(skip_reason)) {}

  void SetUp() override {
    if (!skip_reason_.empty() && !rtp::file_exists(tool_))
      GTEST_SKIP() << tool_ << " is not built (" << skip_reason_ << ")";
    ASSERT_TRUE(rtp::file_exists(tool_)) << tool_ << " is missing: build the " << tool_name_ << " target first";
    dir_ = RTP_BINARY_DIR "/tmp-" + tool_name_ + "-" + std::to_string(::getpid());
    rtp::remove_tree(dir_);
    rtp::make_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) rtp::remove_tree(dir_);
  }

  // `cd CWD && TOOL ARGS > DIR/stdout.txt 2> DIR/stderr.txt` through the shell (ARGS may quote and redirect stdin);
  // without `cwd`, in the test's working directory.
  ToolRun run_tool(const std::string& args, const std::string& cwd = "") const {
    const std::string out = dir_ + "/stdout.txt", err = dir_ + "/stderr.txt";
    const std::string cd = cwd.empty() ? "" : "cd " + cwd + " && ";
    const int st = std::system((cd + tool_ + " " + args + " > " + out + " 2> " + err).c_str());
    return {WEXITSTATUS(st), rtp::read_text_file(out), rtp::read_text_file(err)};
  }

  // A usage error: exit status 2 and `message` in stderr (`what`: the flags given, for the failure message).
  static void expect_usage_error(const ToolRun& r, const std::string& message, const std::string& what) {
    EXPECT_EQ(r.rc, 2) << what << ": " << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << what << ": " << r.err;
  }

  const std::string tool_name_;
  const std::string tool_;  // its path
  std::string dir_;         // the scratch directory

 private:
  const std::string skip_reason_;
};

}  // namespace rtp::testing
