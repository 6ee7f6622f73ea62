// End-to-end CPU runs of the pretraining stage on a tiny model: resume is exact, and training learns.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "rtp/core/file_io.h"
#include "rtp/model/qwen3.h"
#include "rtp/train/checkpoint.h"
#include "rtp/train/recipe.h"
#include "rtp/train/stages.h"
#include "test_util.h"

using namespace rtp::train;

namespace {

// Per process: two checkouts (or two runs) testing at once must not share it. Made known before the tests run,
// so that its cleanup is registered with them.
const std::string& scratch_root() { return rtp::testing::process_scratch_dir("rtp_pretrain_test"); }
[[maybe_unused]] const std::string& kScratchAtStart = scratch_root();

TrainConfig tiny(const std::string& name, std::vector<std::pair<std::string, std::string>> more = {}) {
  const std::string out = scratch_root() + "/" + name;
  remove_directory_tree(out);
  std::vector<std::pair<std::string, std::string>> ov = {{"device", "cpu"}, {"out_dir", out}, {"log_every", "1000"}};
  ov.insert(ov.end(), more.begin(), more.end());
  return load_train_config(std::string(RTP_SOURCE_DIR) + "/recipes/toy-pretrain-smoke.yaml", ov);
}

TrainResult run(const TrainConfig& c) {
  rtp::RunContext ctx = make_run_context(c);
  return run_stage(c, ctx);
}

}  // namespace

TEST(Pretrain, ResumeReproducesTheUninterruptedRun) {
  at::set_num_threads(1);  // same reduction order in every run
  const TrainConfig full = tiny("full", {{"steps", "6"}, {"save_every", "3"}, {"warmup_steps", "2"}});
  const TrainResult a = run(full);
  ASSERT_EQ(a.losses.size(), 6u);
  EXPECT_EQ(a.steps_done, 6);
  EXPECT_TRUE(rtp::file_exists(full.out_dir + "/model/config.json"));
  EXPECT_TRUE(rtp::file_exists(full.out_dir + "/model/model.safetensors"));

  TrainConfig part = tiny("part", {{"steps", "6"}, {"save_every", "3"}, {"warmup_steps", "2"}, {"stop_at_step", "3"}});
  const TrainResult b1 = run(part);
  ASSERT_EQ(b1.losses.size(), 3u);
  EXPECT_TRUE(b1.model_dir.empty());
  ASSERT_TRUE(latest_checkpoint(part.out_dir).has_value());
  part.stop_at_step = 0;
  part.resume = true;
  const TrainResult b2 = run(part);
  EXPECT_EQ(b2.first_step, 3);
  ASSERT_EQ(b2.losses.size(), 3u);
  std::vector<double> joined = b1.losses;
  joined.insert(joined.end(), b2.losses.begin(), b2.losses.end());
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(joined[i], a.losses[i]) << "step " << i;
  EXPECT_EQ(b2.final_accuracy, a.final_accuracy);

  // The final checkpoint loads as a Hugging Face model.
  auto m = rtp::model::load_qwen3(part.out_dir + "/model", torch::kCPU, torch::kFloat32);
  EXPECT_EQ(m.config().num_hidden_layers, full.num_hidden_layers);

  // Resuming with a config that would not continue the same run is refused, naming the field.
  TrainConfig other = part;
  other.lr = 1e-2;
  other.steps = 9;
  try {
    run(other);
    FAIL() << "expected a refusal";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("lr"), std::string::npos) << e.what();
  }
}

// stop_at_step checkpoints whatever save_every ("0: only at the last step or stop_at_step"), so that --resume
// continues, and the finished run's last step is a checkpoint to extend from.
TEST(Pretrain, StopAndFinishCheckpointWithoutSaveEvery) {
  TrainConfig c = tiny("nosave", {{"steps", "3"}, {"save_every", "0"}, {"warmup_steps", "1"}, {"stop_at_step", "2"},
                                  {"eval_every", "0"}});
  ASSERT_EQ(run(c).losses.size(), 2u);
  ASSERT_TRUE(latest_checkpoint(c.out_dir).has_value());
  c.stop_at_step = 0;
  c.resume = true;
  const TrainResult rest = run(c);
  EXPECT_EQ(rest.first_step, 2);
  EXPECT_EQ(rest.losses.size(), 1u);
  ASSERT_TRUE(latest_checkpoint(c.out_dir).has_value());
  EXPECT_NE(latest_checkpoint(c.out_dir)->find("step-00000003"), std::string::npos) << *latest_checkpoint(c.out_dir);
  c.steps = 4;
  const TrainResult more = run(c);
  EXPECT_EQ(more.first_step, 3);
  EXPECT_EQ(more.losses.size(), 1u);
}

TEST(Pretrain, ShortRunReducesTheLoss) {
  at::set_num_threads(2);
  const TrainConfig c = tiny("learn", {{"steps", "40"}, {"save_every", "0"}, {"eval_every", "0"}, {"lr", "1e-2"},
                                      {"warmup_steps", "4"}, {"batch_size", "8"}});
  const TrainResult r = run(c);
  ASSERT_EQ(r.losses.size(), 40u);
  double last = 0;
  for (size_t i = 35; i < 40; ++i) last += r.losses[i] / 5;
  EXPECT_LT(last, 0.85 * r.losses[0]) << "first " << r.losses[0] << ", mean of last 5 " << last;
  EXPECT_GE(r.final_accuracy, 0.0);
}
