// Runs the built rtpurbo-export: a mistake in the command line itself (a choice that is none of the choices, a
// --query-sub-blocks that cannot tile a block, a missing required flag) is a usage error (exit 2) naming the flag;
// a --heads that is a directory or no head map file says so (exit 1), not "does not exist" or a JSON parser's
// complaint. Nothing is written in either case.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "model/model_fixtures.h"
#include "rtp/core/file_io.h"
#include "rtp/sparse/indexer_checkpoint.h"

namespace {

const std::string kTool = RTP_BINARY_DIR "/bin/rtpurbo-export";

class ExportCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rtp::file_exists(kTool)) << kTool << " is missing: build the rtpurbo-export target first";
    dir_ = RTP_BINARY_DIR "/tmp-export-cli-" + std::to_string(::getpid());
    rtp::remove_tree(dir_);
    rtp::make_directories(dir_);
    // An indexer checkpoint for qwen3-tiny (3 layers, 2 KV heads, head_dim 32) with block size 8 and 4 query
    // sub-blocks: --heads reads its head map and settings.
    rtp::sparse::HeadMap heads = rtp::sparse::HeadMap::all_streaming(3, 2, 2);
    heads.retrieval[0][1] = 1;
    rtp::sparse::Indexer ix(heads, 32, 16);
    rtp::sparse::SparseSettings s;
    s.block_size = 8;
    s.query_sub_blocks = 4;
    ck_ = dir_ + "/ck.safetensors";
    rtp::sparse::save_indexer_checkpoint(ck_, ix, s);
  }
  void TearDown() override { rtp::remove_tree(dir_); }
  // Exit code and stderr of the tool on `args` (after --model qwen3-tiny --out DIR/out).
  std::pair<int, std::string> run(const std::string& args) const {
    const std::string err = dir_ + "/stderr.txt";
    const std::string cmd = kTool + " --model " + rtp::testing::model_fixture_dir("qwen3-tiny") + " --out " + out() +
                            " " + args + " > /dev/null 2> " + err;
    const int st = std::system(cmd.c_str());
    return {WEXITSTATUS(st), rtp::read_text_file(err)};
  }
  std::string out() const { return dir_ + "/out"; }
  std::string dir_, ck_;
};

TEST_F(ExportCli, CommandLineMistakesAreUsageErrors) {
  const std::pair<std::string, std::string> cases[] = {
      {"--sub-block-aggregate median", "--sub-block-aggregate 'median' is not valid: expected mean or max"},
      {"--query-sub-blocks 3", "--query-sub-blocks '3' is not valid: expected a power of two"},
      {"--query-sub-blocks 32 --block-size 16", "--query-sub-blocks 32 exceeds --block-size 16"},
      // against the block size the --heads checkpoint carries (8)
      {"--query-sub-blocks 16", "--query-sub-blocks 16 exceeds the block size 8 (from --heads " + ck_ + ")"},
      {"--block-size 2", "--block-size 2 is below the query sub-blocks 4 (from --heads " + ck_ + ")"},
  };
  for (const auto& [flags, message] : cases) {
    const auto [rc, err] = run("--heads " + ck_ + " " + flags);
    EXPECT_EQ(rc, 2) << flags << ": " << err;
    EXPECT_NE(err.find(message), std::string::npos) << flags << ": " << err;
    EXPECT_NE(err.find("bad command line"), std::string::npos) << flags << ": " << err;
  }
  const auto [rc, err] = run("");
  EXPECT_EQ(rc, 2) << err;
  EXPECT_NE(err.find("--heads is required"), std::string::npos) << err;
  EXPECT_FALSE(rtp::directory_exists(out()));
  // and the good command line writes the directory
  const auto [rc2, err2] = run("--heads " + ck_ + " --query-sub-blocks 8");
  EXPECT_EQ(rc2, 0) << err2;
  EXPECT_TRUE(rtp::directory_exists(out()));
}

TEST_F(ExportCli, HeadsThatIsNoHeadMapFileSaysWhatItIs) {
  auto [rc, err] = run("--heads " + dir_);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--heads '" + dir_ + "' is a directory, expected an HDF5 head profile"), std::string::npos)
      << err;
  rtp::write_file_atomic(dir_ + "/heads.svg", "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n");
  std::tie(rc, err) = run("--heads " + dir_ + "/heads.svg");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--heads '" + dir_ + "/heads.svg' is not a head map file: expected an HDF5 head profile"),
            std::string::npos) << err;
  EXPECT_EQ(err.find("json.exception"), std::string::npos) << err;
  std::tie(rc, err) = run("--heads " + dir_ + "/missing.h5");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--heads '" + dir_ + "/missing.h5' does not exist"), std::string::npos) << err;
  EXPECT_FALSE(rtp::directory_exists(out()));
}

}  // namespace
