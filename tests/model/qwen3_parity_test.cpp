// CPU fp32 forward against logits that Hugging Face transformers computed on the same checkpoints.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/model_fixtures.h"
#include "rtp/core/error.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"
#include "rtp/core/file_io.h"
#include <nlohmann/json.hpp>
#include <filesystem>
#include <map>

namespace {

class Qwen3Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen3Parity, Fp32LogitsMatchTransformers) {
  const std::string dir = rtp::testing::model_fixture_dir(GetParam());
  auto ref = rtp::read_all_tensors(dir + "/reference.safetensors");
  torch::Tensor ids, logits;
  for (auto& [n, t] : ref) {
    if (n == "input_ids") ids = t;
    if (n == "logits") logits = t;
  }
  ASSERT_TRUE(ids.defined() && logits.defined());
  auto model = rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
  torch::NoGradGuard no_grad;
  auto out = model.forward(ids);
  ASSERT_EQ(out.sizes(), logits.sizes());
  const double err = (out - logits).abs().max().item<double>();
  RecordProperty("max_abs_logit_error", std::to_string(err));
  std::cout << GetParam() << ": max |logit - HF| = " << err << "\n";
  EXPECT_LE(err, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen3Parity, ::testing::ValuesIn(rtp::testing::model_fixture_names()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(Qwen3Model, ObserverSeesPreRopeNormalisedQK) {
  torch::manual_seed(47);  // the random ids: the same in every run, whatever ran before
  const std::string dir = rtp::testing::model_fixture_dir("qwen3-tiny");
  auto model = rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, model.config().vocab_size, {1, 11}, torch::kInt64);
  int calls = 0;
  rtp::model::ForwardOptions o;
  o.observer = [&](const rtp::model::LayerAttentionInputs& in) {
    ++calls;
    EXPECT_EQ(in.q_pre_rope.sizes(), (std::vector<int64_t>{1, 4, 11, 32}));
    EXPECT_EQ(in.k_pre_rope.sizes(), (std::vector<int64_t>{1, 2, 11, 32}));
    // Position 0 has angle 0: RoPE leaves it unchanged, later positions are rotated.
    EXPECT_TRUE(torch::allclose(in.q.select(2, 0), in.q_pre_rope.select(2, 0)));
    EXPECT_FALSE(torch::allclose(in.q.select(2, 5), in.q_pre_rope.select(2, 5)));
    // RoPE is a rotation: norms are kept.
    EXPECT_TRUE(torch::allclose(in.k.norm(2, -1), in.k_pre_rope.norm(2, -1), 1e-5, 1e-5));
  };
  torch::NoGradGuard no_grad;
  model.forward(ids, o);
  EXPECT_EQ(calls, 3);
}

TEST(Qwen3Model, SaveLoadRoundTripKeepsLogits) {
  torch::manual_seed(72);  // the random ids: the same in every run, whatever ran before
  const std::string dir = rtp::testing::model_fixture_dir("qwen3-moe-tiny");
  auto model = rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
  const std::string out = std::string(RTP_BINARY_DIR) + "/tmp-roundtrip-moe";
  rtp::model::save_qwen3(model, out, torch::kFloat32);
  auto again = rtp::model::load_qwen3(out, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, model.config().vocab_size, {2, 9}, torch::kInt64);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model.forward(ids), again.forward(ids)));
}

TEST(Qwen3Model, MissingTensorIsAClearError) {
  const std::string src = rtp::testing::model_fixture_dir("qwen3-tiny-yarn-tied-bf16");
  auto all = rtp::read_all_tensors(src + "/model.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> kept;
  for (auto& kv : all)
    if (kv.first != "model.layers.1.self_attn.k_norm.weight") kept.push_back(kv);
  const std::string dir = std::string(RTP_BINARY_DIR) + "/tmp-missing-tensor";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  rtp::save_tensors(dir + "/model.safetensors", kept);
  try {
    rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
    FAIL() << "loading succeeded without a tensor";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.self_attn.k_norm.weight"), std::string::npos) << e.what();
  }
}

TEST(Qwen3Model, ShapeDisagreeingWithConfigIsAClearError) {
  const std::string src = rtp::testing::model_fixture_dir("qwen3-tiny-yarn-tied-bf16");
  const std::string dir = std::string(RTP_BINARY_DIR) + "/tmp-bad-config";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/model.safetensors", dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  auto cfg = rtp::read_json_file(src + "/config.json");
  cfg["intermediate_size"] = 100;
  rtp::write_json_atomic(dir + "/config.json", cfg);
  try {
    rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
    FAIL() << "loading succeeded with a wrong intermediate_size";
  } catch (const rtp::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mlp.gate_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("intermediate_size=100"), std::string::npos) << msg;
  }
}

}  // namespace

// Training parity: the gradient of the mean next-token cross-entropy with respect to every parameter, against
// Hugging Face's autograd on the same checkpoint and ids (scripts/gen_grad_fixture.py). The forward test above
// cannot see a backward that differs (a detached tensor, a wrong RoPE or norm derivative).
TEST(Qwen3Model, GradientsMatchTransformers) {
  const std::string dir = rtp::testing::model_fixture_dir("qwen3-tiny");
  auto ref = rtp::read_all_tensors(dir + "/gradients.safetensors");
  std::map<std::string, torch::Tensor> by_name(ref.begin(), ref.end());
  auto model = rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
  model.module().train();
  const auto params = model.named_parameters();
  for (const auto& [n, p] : params) p.requires_grad_(true);
  const torch::Tensor ids = by_name.at("input_ids");
  auto logits = model.forward(ids);
  const int64_t V = logits.size(-1);
  auto loss = torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, V}), ids.slice(1, 1).reshape({-1}));
  EXPECT_NEAR(loss.item<double>(), by_name.at("loss").item<double>(), 1e-5);
  loss.backward();
  int64_t compared = 0;
  for (const auto& [n, p] : params) {
    auto it = by_name.find("grad." + n);
    ASSERT_NE(it, by_name.end()) << "no reference gradient for " << n;
    ASSERT_TRUE(p.grad().defined()) << n << " got no gradient";
    const double scale = it->second.abs().max().item<double>();
    const double err = (p.grad() - it->second).abs().max().item<double>();
    EXPECT_LE(err, 1e-4 * std::max(scale, 1e-3)) << n << ": max |grad - HF| " << err << " (max |HF| " << scale << ")";
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int64_t>(by_name.size()) - 2);
}
