// The CUDA ops on tensors that live on a GPU other than the current one: each must run on its tensors' GPU and give
// the bits it gives there when that GPU is current (a kernel launched on the current GPU with another GPU's pointers
// faults or reads the wrong memory; a stream of one GPU used on another is an invalid handle). Needs two GPUs: skipped
// with a message on fewer.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/ops/moe_router.h"
#include "rtp/ops/rms_norm.h"
#include "rtp/ops/sparse_attention.h"
#include "rtp/ops/swiglu.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace {

using rtp::kernels::HeadKind;

// The outputs of `op` on inputs moved to `device`, back on the CPU.
using Op = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;
std::vector<torch::Tensor> run_on(const Op& op, const std::vector<torch::Tensor>& cpu_inputs, torch::Device device) {
  std::vector<torch::Tensor> in;
  for (const auto& t : cpu_inputs) in.push_back(t.to(device));
  std::vector<torch::Tensor> out = op(in);
  for (auto& t : out) {
    EXPECT_EQ(t.device(), device);
    t = t.cpu();
  }
  return out;
}

void expect_same_on_both_gpus(const std::string& name, const Op& op, const std::vector<torch::Tensor>& inputs) {
#ifdef RTPURBO_WITH_CUDA
  c10::cuda::set_device(0);
  const auto on0 = run_on(op, inputs, torch::Device(torch::kCUDA, 0));
  const auto on1 = run_on(op, inputs, torch::Device(torch::kCUDA, 1));  // GPU 0 still current
  torch::cuda::synchronize(1);
  EXPECT_EQ(c10::cuda::current_device(), 0) << name << ": the op left another GPU current";
  ASSERT_EQ(on0.size(), on1.size()) << name;
  for (size_t i = 0; i < on0.size(); ++i)
    EXPECT_TRUE(torch::equal(on0[i].view(-1).view(torch::kUInt8), on1[i].contiguous().view(-1).view(torch::kUInt8)))
        << name << ": output " << i << " differs between GPU 0 and GPU 1";
#else
  (void)name, (void)op, (void)inputs;
#endif
}

TEST(OpsMultiDevice, EachOpRunsOnItsTensorsGpu) {
  if (!rtp::kernels::built_with_cuda() || torch::cuda::device_count() < 2)
    GTEST_SKIP() << "needs two CUDA devices (found " << torch::cuda::device_count()
                 << "): run on a machine of the nvidia-h100-x2 kind";
  torch::manual_seed(5);
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16);
  expect_same_on_both_gpus(
      "rms_norm", [](const auto& t) { return std::vector<torch::Tensor>{rtp::ops::rms_norm(t[0], t[1], 1e-6)}; },
      {torch::randn({3, 7, 128}, bf), torch::randn({128}, bf)});
  expect_same_on_both_gpus(
      "rms_norm_rope_qk",
      [](const auto& t) {
        auto [qn, qr, kn, kr] = rtp::ops::rms_norm_rope_qk(t[0], t[1], t[2], t[3], t[4], t[5], 1e-6);
        return std::vector<torch::Tensor>{qn, qr, kn, kr};
      },
      {torch::randn({1, 5, 4, 64}, bf), torch::randn({64}, bf), torch::randn({1, 5, 2, 64}, bf),
       torch::randn({64}, bf), torch::randn({5, 64}), torch::randn({5, 64})});
  expect_same_on_both_gpus(
      "swiglu", [](const auto& t) { return std::vector<torch::Tensor>{rtp::ops::swiglu(t[0], t[1])}; },
      {torch::randn({3, 384}, bf), torch::randn({3, 384}, bf)});
  expect_same_on_both_gpus(
      "linear_decode", [](const auto& t) { return std::vector<torch::Tensor>{rtp::ops::linear_decode(t[0], t[1])}; },
      {torch::randn({1, 512}, bf), torch::randn({96, 512}, bf)});
  expect_same_on_both_gpus(
      "moe_route",
      [](const auto& t) {
        auto [e, w] = rtp::ops::moe_route(t[0], 8, true);
        return std::vector<torch::Tensor>{e, w};
      },
      {torch::randn({2, 128}, bf)});
  rtp::ops::SparseConfig c;
  c.sink = 4, c.window = 96, c.block_size = 64, c.top_p = 0.9f;
  const int64_t T = 333;
  expect_same_on_both_gpus(
      "select_blocks + sparse_attention",
      [&](const auto& t) {
        const auto lists = rtp::ops::select_blocks(t[0], t[1], c);
        const std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING};
        const auto o = rtp::ops::sparse_attention(t[2], t[3], t[4], kinds, lists, c);
        return std::vector<torch::Tensor>{lists.counts, lists.indices, o};
      },
      {torch::randn({1, 2, T, 16}, bf), torch::randn({1, T, 16}, bf), torch::randn({4, T, 128}, bf),
       torch::randn({2, T, 128}, bf), torch::randn({2, T, 128}, bf)});
}

}  // namespace
