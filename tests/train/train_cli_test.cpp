// Runs the built rtpurbo-train: a flag whose value is wrong on its own is a usage error (exit 2) naming the flag, as
// the README promises ("a number with trailing characters is an error (exit 2)"); the indexer stage refuses a seq_len
// beyond the model's positions for toy data too, before the model loads and before out_dir is touched.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"

namespace {

const std::string kTool = RTP_BINARY_DIR "/bin/rtpurbo-train";
const std::string kRecipe = RTP_SOURCE_DIR "/recipes/toy-indexer.yaml";
const std::string kToyModel = RTP_SOURCE_DIR "/data/toy-model";

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rtp::file_exists(kTool)) << kTool << " is missing: build the rtpurbo-train target first";
    dir_ = RTP_BINARY_DIR "/tmp-train-cli-" + std::to_string(::getpid());
    rtp::remove_tree(dir_);
    rtp::make_directories(dir_);
  }
  void TearDown() override { rtp::remove_tree(dir_); }
  // Exit code and stderr of `rtpurbo-train --recipe toy-indexer.yaml ARGS`.
  std::pair<int, std::string> run(const std::string& args) const {
    const std::string err = dir_ + "/stderr.txt";
    const int st = std::system((kTool + " --recipe " + kRecipe + " " + args + " > /dev/null 2> " + err).c_str());
    return {WEXITSTATUS(st), rtp::read_text_file(err)};
  }
  std::string dir_;
};

TEST_F(TrainCli, AFlagWrongOnItsOwnIsAUsageError) {
  const std::pair<const char*, const char*> cases[] = {
      {"--steps 10x", "--steps: key 'steps': value '10x' is not valid: expected an integer >= 0"},
      {"--lr 3e-3x", "--lr: key 'lr': value '3e-3x' is not valid"},
      {"--data bogus", "--data: key 'data': value 'bogus' is not valid: expected one of toy, files"},
      {"--top-p 0", "--top_p: key 'top_p': value '0' is not valid: expected a number in (0, 1]"},
      {"--resume=maybe", "--resume: key 'resume': value 'maybe' is not valid"},
      {"--device gpu", "--device 'gpu' is not valid: expected cpu, cuda, cuda:N or auto"},
  };
  for (const auto& [flags, message] : cases) {
    const auto [rc, err] = run(std::string("--dump-config ") + flags);
    EXPECT_EQ(rc, 2) << flags << ": " << err;
    EXPECT_NE(err.find(message), std::string::npos) << flags << ": " << err;
    EXPECT_NE(err.find("bad command line"), std::string::npos) << flags << ": " << err;
  }
  // What only the merged config can tell is the config's error, naming recipe and command line.
  const auto [rc, err] = run("--dump-config --steps 2");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("+ command line: warmup_steps (10) must be <= steps (2)"), std::string::npos) << err;
  // and good flags still give the merged config
  EXPECT_EQ(run("--dump-config --steps 20 --top-p 0.9").first, 0);
}

// data: toy generates sequences of any length; a seq_len past the model's max_position_embeddings (8192 for the toy
// model) trained for minutes before. It is refused before the model loads and out_dir is made.
TEST_F(TrainCli, IndexerSeqLenBeyondTheModelsPositionsIsRefusedFirst) {
  const std::string out = dir_ + "/run";
  const auto t0 = std::chrono::steady_clock::now();
  const auto [rc, err] = run("--model_dir " + kToyModel + " --heads_random --seq_len 9000 --steps 2 --warmup_steps 0 "
                             "--device cpu --out_dir " + out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("seq_len 9000 exceeds the max_position_embeddings 8192 of model '" + kToyModel + "'"),
            std::string::npos) << err;
  EXPECT_EQ(err.find("indexer: frozen model"), std::string::npos) << "the model loaded first: " << err;
  EXPECT_FALSE(rtp::directory_exists(out));
  EXPECT_LT(s, 30.0) << err;
}

TEST_F(TrainCli, DumpDataPathIsCheckedBeforeTheBatchesAreMade) {
  const auto [rc, err] = run("--stage pretrain --model_dir '' --steps 1 --warmup_steps 0 --dump-data " + dir_ +
                             "/missing/batches.safetensors");
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("--dump-data '" + dir_ + "/missing/batches.safetensors': directory '" + dir_ +
                     "/missing' does not exist"), std::string::npos) << err;
}

}  // namespace
