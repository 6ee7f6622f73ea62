// The logits task: input_ids in, logits out; inputs the model cannot take are refused before it loads.
#include "rtp/eval/logits_task.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "model/model_fixtures.h"
#include "rtp/core/file_io.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using rtp::testing::error_of;

namespace {

class LogitsTask : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("rtp_logits_task_test_" + std::to_string(::getpid()))).string();
    rtp::make_directories(dir_);
    o_.model_dir = rtp::testing::model_fixture_dir("qwen3-tiny");  // max_position_embeddings 512
    o_.input_path = dir_ + "/in.safetensors";
    o_.output_path = dir_ + "/out.safetensors";
  }
  void TearDown() override { rtp::remove_tree(dir_); }  // not fs::remove_all: it crashes next to libtorch
  void write_ids(const torch::Tensor& ids) { rtp::save_tensors(o_.input_path, {{"input_ids", ids}}); }
  std::string dir_;
  rtp::eval::LogitsTaskOptions o_;
  rtp::RunContext ctx_;
};

TEST_F(LogitsTask, WritesTheModelsLogits) {
  torch::manual_seed(39);  // the random ids: the same in every run, whatever ran before
  const auto ids = torch::randint(0, 100, {2, 512}, torch::kInt64);  // exactly max_position_embeddings
  write_ids(ids);
  rtp::eval::run_logits_task(o_, ctx_);
  torch::Tensor logits;
  for (auto& [n, t] : rtp::read_all_tensors(o_.output_path))
    if (n == "logits") logits = t;
  ASSERT_TRUE(logits.defined());
  auto model = rtp::model::load_qwen3(o_.model_dir, torch::kCPU, torch::kFloat32);
  torch::NoGradGuard ng;
  const auto expect = model.forward(ids.narrow(0, 1, 1));
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 512, model.config().vocab_size}));
  EXPECT_LE((logits.narrow(0, 1, 1) - expect).abs().max().item<double>(), 1e-4);
}

TEST_F(LogitsTask, RefusesInputsTheModelCannotTake) {
  write_ids(torch::zeros({1, 513}, torch::kInt64));
  std::string e = error_of([&] { rtp::eval::run_logits_task(o_, ctx_); });
  EXPECT_NE(e.find("input_ids of length 513 exceeds the model's max_position_embeddings 512"), std::string::npos) << e;
  write_ids(torch::zeros({1, 0}, torch::kInt64));
  e = error_of([&] { rtp::eval::run_logits_task(o_, ctx_); });
  EXPECT_NE(e.find("has shape [1, 0]: expected at least one sequence of at least one token"), std::string::npos) << e;
  EXPECT_FALSE(rtp::file_exists(o_.output_path));
}

}  // namespace
