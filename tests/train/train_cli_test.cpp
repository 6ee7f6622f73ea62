// Runs the built rtpurbo-train: a flag whose value is wrong on its own is a usage error (exit 2) naming the flag, as
// the README promises ("a number with trailing characters is an error (exit 2)"); the indexer stage refuses a seq_len
// beyond the model's positions for toy data too, before the model loads and before out_dir is touched.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

const std::string kRecipe = RTP_SOURCE_DIR "/recipes/toy-indexer.yaml";
const std::string kToyModel = RTP_SOURCE_DIR "/data/toy-model";

class TrainCli : public rtp::testing::ToolCliTest {
 protected:
  TrainCli() : ToolCliTest("rtpurbo-train") {}
  // `rtpurbo-train --recipe toy-indexer.yaml ARGS`.
  rtp::testing::ToolRun run(const std::string& args) const { return run_tool("--recipe " + kRecipe + " " + args); }
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
    const auto r = run(std::string("--dump-config ") + flags);
    expect_usage_error(r, message, flags);
    EXPECT_NE(r.err.find("bad command line"), std::string::npos) << flags << ": " << r.err;
  }
  // What only the merged config can tell is the config's error, naming recipe and command line.
  const auto r = run("--dump-config --steps 2");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("+ command line: warmup_steps (10) must be <= steps (2)"), std::string::npos) << r.err;
  // and good flags still give the merged config
  EXPECT_EQ(run("--dump-config --steps 20 --top-p 0.9").rc, 0);
}

// data: toy generates sequences of any length; a seq_len past the model's max_position_embeddings (8192 for the toy
// model) trained for minutes before. It is refused before the model loads and out_dir is made.
TEST_F(TrainCli, IndexerSeqLenBeyondTheModelsPositionsIsRefusedFirst) {
  const std::string out = dir_ + "/run";
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run("--model_dir " + kToyModel + " --heads_random --seq_len 9000 --steps 2 --warmup_steps 0 "
                     "--device cpu --out_dir " + out);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("seq_len 9000 exceeds the max_position_embeddings 8192 of model '" + kToyModel + "'"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("indexer: frozen model"), std::string::npos) << "the model loaded first: " << r.err;
  EXPECT_FALSE(rtp::directory_exists(out));
  EXPECT_LT(s, 30.0) << r.err;
}

TEST_F(TrainCli, DumpDataPathIsCheckedBeforeTheBatchesAreMade) {
  const auto r = run("--stage pretrain --model_dir '' --steps 1 --warmup_steps 0 --dump-data " + dir_ +
                     "/missing/batches.safetensors");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--dump-data '" + dir_ + "/missing/batches.safetensors': directory '" + dir_ +
                       "/missing' does not exist"), std::string::npos) << r.err;
}

}  // namespace

// A setting the run does not read is named in a warning, on --dump-config too; a shipped recipe run as it is
// prints none.
TEST_F(TrainCli, SettingsTheStageDoesNotReadAreNamed) {
  const auto r = run("--dump-config --autocast bfloat16 --eval-every 5");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("warning: stage 'indexer' with data 'toy' does not read these settings, which differ from "
                       "their defaults: autocast=bfloat16, eval_every=5"), std::string::npos) << r.err;
  const auto plain = run("--dump-config");
  EXPECT_EQ(plain.rc, 0) << plain.err;
  EXPECT_EQ(plain.err.find("warning"), std::string::npos) << plain.err;
}
