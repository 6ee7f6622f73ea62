// Messages about missing directories name the path the user gave (never the temporary file a write goes through).
#include "rtp/core/file_io.h"

#include <gtest/gtest.h>
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

TEST_F(FileIo, RequireDirectoryTellsAFileFromAMissingPath) {
  rtp::write_file_atomic(dir_ + "/config.json", "{}");
  const std::string e = error_of([&] { rtp::require_directory(dir_ + "/config.json", "model directory"); });
  EXPECT_TRUE(has(e, "model directory '" + dir_ + "/config.json' is a file, expected a directory")) << e;
  const std::string e2 = error_of([&] { rtp::require_directory(dir_ + "/missing", "model directory", "(hint)"); });
  EXPECT_TRUE(has(e2, "model directory '" + dir_ + "/missing' does not exist (hint)")) << e2;
  EXPECT_EQ(error_of([&] { rtp::require_directory(dir_, "model directory"); }), "<no error: the call succeeded>");
}

}  // namespace
