// Messages about missing directories name the path the user gave (never the temporary file a write goes through).
#include "rtp/core/file_io.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "rtp/core/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using rtp::testing::error_of;

namespace {

class FileIo : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("rtp_file_io_test_" + std::to_string(::getpid()))).string();
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

bool has(const std::string& s, const std::string& piece) { return s.find(piece) != std::string::npos; }

TEST_F(FileIo, WriteIntoAMissingDirectorySaysSoAndNamesTheDestination) {
  const std::string dest = dir_ + "/nowhere/out.json";
  const std::string e = error_of([&] { rtp::write_file_atomic(dest, "x"); });
  EXPECT_TRUE(has(e, "cannot write '" + dest + "'") && has(e, "directory '" + dir_ + "/nowhere' does not exist")) << e;
  EXPECT_FALSE(has(e, ".tmp.")) << e;
  rtp::write_file_atomic(dir_ + "/file", "x");
  const std::string e2 = error_of([&] { rtp::write_file_atomic(dir_ + "/file/out.json", "x"); });
  EXPECT_TRUE(has(e2, "'" + dir_ + "/file' is not a directory")) << e2;
}

TEST_F(FileIo, OutputDirectoryCheckedUpFront) {
  EXPECT_EQ(error_of([&] { rtp::require_output_directory_for(dir_ + "/a.h5", "--out"); }),
            "<no error: the call succeeded>");
  EXPECT_EQ(error_of([&] { rtp::require_output_directory_for("relative.h5", "--out"); }),
            "<no error: the call succeeded>");  // the current directory
  const std::string e = error_of([&] { rtp::require_output_directory_for(dir_ + "/no/a.h5", "--out"); });
  EXPECT_TRUE(has(e, "--out '" + dir_ + "/no/a.h5': directory '" + dir_ + "/no' does not exist")) << e;
  const std::string e2 = error_of([&] { rtp::require_output_directory_for(dir_, "--out"); });
  EXPECT_TRUE(has(e2, "is a directory, expected a file name")) << e2;
}

// Whether files can be created is tried, not asked of access(): root is told "writable" about /proc and read-only
// mounts. The tries leave nothing behind.
TEST_F(FileIo, OutputChecksTryToCreateAndLeaveNothing) {
  const std::string e = error_of([&] { rtp::require_output_directory_for("/proc/rtp-x.jsonl", "--dump-prompts"); });
  EXPECT_TRUE(has(e, "--dump-prompts '/proc/rtp-x.jsonl': cannot create files in directory '/proc'")) << e;
  EXPECT_EQ(error_of([&] { rtp::require_creatable_directory(dir_ + "/new/deeper", "--out-dir"); }),
            "<no error: the call succeeded>");
  EXPECT_FALSE(fs::exists(dir_ + "/new"));  // checked, not made
  EXPECT_EQ(error_of([&] { rtp::require_creatable_directory(dir_, "--out-dir"); }), "<no error: the call succeeded>");
  EXPECT_TRUE(fs::is_empty(dir_));  // no probe file left
  rtp::write_file_atomic(dir_ + "/file", "x");
  const std::string e2 = error_of([&] { rtp::require_creatable_directory(dir_ + "/file/out", "--out-dir"); });
  EXPECT_TRUE(has(e2, "--out-dir '" + dir_ + "/file/out': '" + dir_ + "/file' is a file, expected a directory")) << e2;
  const std::string e3 = error_of([&] { rtp::require_creatable_directory("/proc/rtp-out", "--out-dir"); });
  EXPECT_TRUE(has(e3, "--out-dir '/proc/rtp-out': cannot create files in '/proc'")) << e3;
}

TEST_F(FileIo, RequireInputFileTellsADirectoryFromAMissingPath) {
  EXPECT_TRUE(has(error_of([&] { rtp::require_input_file(dir_, "--essay"); }),
                  "--essay '" + dir_ + "' is a directory, expected a file"));
  EXPECT_TRUE(has(error_of([&] { rtp::require_input_file(dir_ + "/none.txt", "--essay"); }),
                  "--essay '" + dir_ + "/none.txt' does not exist"));
  EXPECT_TRUE(has(error_of([&] { rtp::require_input_file(dir_, "--text", "a UTF-8 text file"); }),
                  "--text '" + dir_ + "' is a directory, expected a UTF-8 text file"));
  EXPECT_TRUE(has(error_of([&] { rtp::require_input_file(dir_ + "/none", "--text", "a UTF-8 text file"); }),
                  "--text '" + dir_ + "/none' does not exist (expected a UTF-8 text file)"));
  rtp::write_file_atomic(dir_ + "/essay.txt", "Once.");
  EXPECT_EQ(error_of([&] { rtp::require_input_file(dir_ + "/essay.txt", "--essay"); }), "<no error: the call succeeded>");
}

TEST_F(FileIo, RequireDirectoryTellsAFileFromAMissingPath) {
  rtp::write_file_atomic(dir_ + "/config.json", "{}");
  const std::string e = error_of([&] { rtp::require_directory(dir_ + "/config.json", "model directory"); });
  EXPECT_TRUE(has(e, "model directory '" + dir_ + "/config.json' is a file, expected a directory")) << e;
  const std::string e2 = error_of([&] { rtp::require_directory(dir_ + "/missing", "model directory", "(hint)"); });
  EXPECT_TRUE(has(e2, "model directory '" + dir_ + "/missing' does not exist (hint)")) << e2;
  EXPECT_EQ(error_of([&] { rtp::require_directory(dir_, "model directory"); }), "<no error: the call succeeded>");
}

// What a killed export or checkpoint save left (named with its dead pid) goes; a live process's, another name's, and
// names that only look similar stay.
TEST_F(FileIo, StaleTemporariesOfDeadProcessesAreRemoved) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);  // reaped: its pid names no process now
  const std::string dead = std::to_string(child), mine = std::to_string(::getpid());
  const std::string parent = std::to_string(::getppid());  // alive: it runs this test
  auto make_dir = [&](const std::string& name) {
    fs::create_directories(dir_ + "/" + name + "/inner");
    rtp::write_file_atomic(dir_ + "/" + name + "/inner/w.bin", "weights");
  };
  make_dir("conv.tmp." + dead);                       // a killed export
  rtp::write_file_atomic(dir_ + "/step-00000003.tmp." + dead + ".9f3a", "x");  // a killed checkpoint save
  make_dir("conv.tmp." + mine);                       // this process's own
  make_dir("conv.tmp." + parent);                     // a live process's
  make_dir("conv.tmp.12ab");                          // not a pid
  make_dir("conv.tmp." + dead + "x");                 // not a pid either
  make_dir("conv");                                   // the output itself
  make_dir("other.tmp." + dead);                      // another prefix
  EXPECT_EQ(rtp::remove_stale_temporaries(dir_, "conv"), 1);
  EXPECT_FALSE(fs::exists(dir_ + "/conv.tmp." + dead));
  for (const std::string kept : {"conv.tmp." + mine, "conv.tmp." + parent, std::string("conv.tmp.12ab"),
                                 "conv.tmp." + dead + "x", std::string("conv"), "other.tmp." + dead,
                                 "step-00000003.tmp." + dead + ".9f3a"})
    EXPECT_TRUE(fs::exists(dir_ + "/" + kept)) << kept;
  EXPECT_EQ(rtp::remove_stale_temporaries(dir_, "step-"), 1);
  EXPECT_FALSE(fs::exists(dir_ + "/step-00000003.tmp." + dead + ".9f3a"));
  EXPECT_EQ(rtp::remove_stale_temporaries(dir_ + "/missing", "conv"), 0);
}

}  // namespace
