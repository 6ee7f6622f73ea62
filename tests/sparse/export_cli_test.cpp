// Runs the built rtpurbo-export: a mistake in the command line itself (a choice that is none of the choices, a
// --query-sub-blocks that cannot tile a block, a missing required flag) is a usage error (exit 2) naming the flag;
// a --heads that is a directory or no head map file says so (exit 1), not "does not exist" or a JSON parser's
// complaint. Nothing is written in either case.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <utility>

#include "model/model_fixtures.h"
#include "rtp/core/file_io.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "tool_cli.h"

namespace {

class ExportCli : public rtp::testing::ToolCliTest {
 protected:
  ExportCli() : ToolCliTest("rtpurbo-export") {}
  void SetUp() override {
    ToolCliTest::SetUp();
    if (HasFatalFailure() || IsSkipped()) return;
    // An indexer checkpoint for qwen3-tiny (3 layers, 2 KV heads, head_dim 32) with block size 128 and 128 query
    // sub-blocks: --heads reads its head map and settings.
    rtp::sparse::HeadMap heads = rtp::sparse::HeadMap::all_streaming(3, 2, 2);
    heads.retrieval[0][1] = 1;
    rtp::sparse::Indexer ix(heads, 32, 16);
    rtp::sparse::SparseSettings s;
    s.block_size = 128;
    s.query_sub_blocks = 128;
    ck_ = dir_ + "/ck.safetensors";
    rtp::sparse::save_indexer_checkpoint(ck_, ix, s);
  }
  // The tool on `args` (after --model qwen3-tiny --out DIR/out).
  rtp::testing::ToolRun run(const std::string& args) const {
    return run_tool("--model " + rtp::testing::model_fixture_dir("qwen3-tiny") + " --out " + out() + " " + args);
  }
  std::string out() const { return dir_ + "/out"; }
  std::string ck_;
};

TEST_F(ExportCli, CommandLineMistakesAreUsageErrors) {
  const std::pair<std::string, std::string> cases[] = {
      {"--sub-block-aggregate median", "--sub-block-aggregate 'median' is not valid: expected mean or max"},
      {"--query-sub-blocks 3", "--query-sub-blocks '3' is not valid: expected a power of two"},
      {"--query-sub-blocks 128 --block-size 64", "--query-sub-blocks 128 exceeds --block-size 64"},
      // only the block sizes the kernels tile
      {"--block-size 96", "--block-size '96' is not valid: expected one of 64, 128"},
      {"--block-size 16", "--block-size '16' is not valid: expected one of 64, 128"},
      // against the block size the --heads checkpoint carries (128) and its query sub-blocks (128)
      {"--query-sub-blocks 256", "--query-sub-blocks 256 exceeds the block size 128 (from --heads " + ck_ + ")"},
      {"--block-size 64", "--block-size 64 is below the query sub-blocks 128 (from --heads " + ck_ + ")"},
      // a model whose retrieval heads would select no block at all (the evaluation refused it, after the export)
      {"--local-blocks 0", "--local-blocks '0' is not valid: expected an integer >= 1"},
  };
  for (const auto& [flags, message] : cases) {
    const auto r = run("--heads " + ck_ + " " + flags);
    expect_usage_error(r, message, flags);
    EXPECT_NE(r.err.find("bad command line"), std::string::npos) << flags << ": " << r.err;
  }
  const auto r = run("");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--heads is required"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::directory_exists(out()));
  // and the good command line writes the directory
  const auto r2 = run("--heads " + ck_ + " --query-sub-blocks 8");
  EXPECT_EQ(r2.rc, 0) << r2.err;
  EXPECT_TRUE(rtp::directory_exists(out()));
}

TEST_F(ExportCli, HeadsThatIsNoHeadMapFileSaysWhatItIs) {
  auto r = run("--heads " + dir_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--heads '" + dir_ + "' is a directory, expected an HDF5 head profile"), std::string::npos)
      << r.err;
  rtp::write_file_atomic(dir_ + "/heads.svg", "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>\n");
  r = run("--heads " + dir_ + "/heads.svg");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--heads '" + dir_ + "/heads.svg' is not a head map file: expected an HDF5 head profile"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << r.err;
  r = run("--heads " + dir_ + "/missing.h5");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--heads '" + dir_ + "/missing.h5' does not exist"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::directory_exists(out()));
}

// --indexer given a training run's out_dir names the checkpoint in it; any other directory is said to be one.
TEST_F(ExportCli, IndexerThatIsADirectorySaysWhatToPass) {
  const std::string run_dir = dir_ + "/indexer-run";
  rtp::make_directories(run_dir);
  auto r = run("--heads " + ck_ + " --indexer " + run_dir);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--indexer '" + run_dir + "' is a directory, expected an indexer checkpoint"), std::string::npos)
      << r.err;
  rtp::write_file_atomic(run_dir + "/indexer.safetensors", rtp::read_text_file(ck_));
  r = run("--heads " + ck_ + " --indexer " + run_dir);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("its indexer checkpoint is '" + run_dir + "/indexer.safetensors': pass that file"),
            std::string::npos) << r.err;
  EXPECT_FALSE(rtp::directory_exists(out()));
  EXPECT_EQ(run("--heads " + ck_ + " --indexer " + run_dir + "/indexer.safetensors").rc, 0);
}

}  // namespace
