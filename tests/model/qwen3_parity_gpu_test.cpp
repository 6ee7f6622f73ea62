// CUDA bf16 forward against the fp32 HF reference: its error must stay within twice the error of HF's own
// bf16 forward (computed on CPU by the fixture generator) plus a small floor.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>

#include "model/model_fixtures.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"

namespace {

class Qwen3ParityCuda : public ::testing::TestWithParam<std::string> {};

TEST_P(Qwen3ParityCuda, Bf16WithinTwiceHfBf16Error) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: GPU parity runs on the GPU machine";
  const std::string dir = rtp::testing::model_fixture_dir(GetParam());
  torch::Tensor ids, ref32, hf16;
  for (auto& [n, t] : rtp::read_all_tensors(dir + "/reference.safetensors")) {
    if (n == "input_ids") ids = t;
    if (n == "logits") ref32 = t;
    if (n == "logits_hf_bf16") hf16 = t;
  }
  auto model = rtp::model::load_qwen3(dir, torch::Device(torch::kCUDA, 0), torch::kBFloat16);
  torch::NoGradGuard no_grad;
  auto out = model.forward(ids).cpu();
  const double ours = (out - ref32).abs().max().item<double>();
  const double theirs = (hf16 - ref32).abs().max().item<double>();
  std::cout << GetParam() << ": bf16 CUDA max|err| = " << ours << " (HF bf16 CPU: " << theirs << ")\n";
  EXPECT_LE(ours, 2.0 * theirs + 1e-2);
  // fp32 on CUDA must match as closely as on CPU (TF32 off by default in libtorch matmul? keep a loose bound).
  auto model32 = rtp::model::load_qwen3(dir, torch::Device(torch::kCUDA, 0), torch::kFloat32);
  const double err32 = (model32.forward(ids).cpu() - ref32).abs().max().item<double>();
  std::cout << GetParam() << ": fp32 CUDA max|err| = " << err32 << "\n";
  EXPECT_LE(err32, 1e-3);
  // Inference runs q/k/v and gate/up as fused GEMMs over shared storage; with gradients wanted, the separate
  // parameters. Both must give the same logits up to the GEMMs' summation order (float32: no rounding of the
  // intermediate activations), also after to(), which rebuilds the shared storage.
  model32.to(torch::Device(torch::kCUDA, 0), torch::kFloat32);
  const auto fused = model32.forward(ids).cpu();
  torch::Tensor separate;
  {
    torch::AutoGradMode grad(true);
    separate = model32.forward(ids).detach().cpu();
  }
  const double fused_diff = (fused - separate).abs().max().item<double>();
  std::cout << GetParam() << ": fp32 CUDA fused vs separate projections max|diff| = " << fused_diff << "\n";
  EXPECT_LE(fused_diff, 1e-4);
  EXPECT_LE((fused - ref32).abs().max().item<double>(), 1e-3);
}

// Training through the model on a GPU (the pretraining stage): every parameter's float32 gradient equals the one the
// CPU's eager ops (Hugging Face's op sequence) give, so no kernel without a backward stands in while autograd records.
TEST_P(Qwen3ParityCuda, Float32GradientsEqualTheCpus) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: GPU parity runs on the GPU machine";
  const std::string dir = rtp::testing::model_fixture_dir(GetParam());
  torch::Tensor ids;
  for (auto& [n, t] : rtp::read_all_tensors(dir + "/reference.safetensors"))
    if (n == "input_ids") ids = t;
  std::map<std::string, torch::Tensor> grads[2];
  torch::Tensor probe;
  for (int on_gpu = 0; on_gpu < 2; ++on_gpu) {
    const torch::Device device = on_gpu ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
    auto model = rtp::model::load_qwen3(dir, device, torch::kFloat32);
    const auto params = model.named_parameters();
    for (const auto& [n, p] : params) p.requires_grad_(true);
    const auto logits = model.forward(ids.to(device));
    if (!probe.defined()) {
      torch::manual_seed(31);
      probe = torch::randn(logits.sizes());
    }
    (logits * probe.to(device)).sum().backward();
    for (const auto& [n, p] : params)
      if (p.grad().defined()) grads[on_gpu][n] = p.grad().cpu();
  }
  ASSERT_FALSE(grads[0].empty());
  double worst = 0;
  for (const auto& [n, ref] : grads[0]) {
    const auto it = grads[1].find(n);
    ASSERT_NE(it, grads[1].end()) << n << ": no gradient on the GPU (a kernel without backward in the graph?)";
    const double scale = 1 + ref.abs().max().item<double>();
    const double err = (it->second - ref).abs().max().item<double>() / scale;
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-3) << n;
  }
  std::cout << GetParam() << ": " << grads[0].size() << " parameter gradients, GPU vs CPU worst max|diff| / (1 + max|grad|) = "
            << worst << "\n";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Qwen3ParityCuda, ::testing::ValuesIn(rtp::testing::model_fixture_names()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

}  // namespace
