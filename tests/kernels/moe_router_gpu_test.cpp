// The MoE router CUDA kernel (rtp/kernels/moe_router.h): float32 logits give the CPU reference's experts and weights
// within float32 rounding; bf16 logits (where ties are common) give a valid top-k (no unselected expert more probable
// than a selected one) whose weights are within twice the eager path's error of the float64 routing; 512 experts /
// top-32 at the kernel's limits. (Which tied expert comes first is not compared with eager's: torch does not fix it.)
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/kernels/moe_router.h"
#include "rtp/ops/moe_router.h"

namespace {

const torch::Device kCuda(torch::kCUDA, 0);

// The CPU reference's (expert ids, weights) for float32 logits [N, E].
std::pair<torch::Tensor, torch::Tensor> route_on_cpu(const torch::Tensor& logits, int64_t K, bool norm) {
  const auto l = logits.contiguous();
  auto e_ref = torch::empty({l.size(0), K}, torch::kInt64);
  auto w_ref = torch::empty({l.size(0), K});
  rtp::kernels::MoeRouterParams p;
  p.logits = l.data_ptr<float>(), p.expert = e_ref.data_ptr<int64_t>(), p.weight = w_ref.data_ptr<float>();
  p.tokens = l.size(0), p.experts = l.size(1), p.top_k = K, p.norm_topk_prob = norm;
  rtp::kernels::moe_router_cpu(p);
  return {e_ref, w_ref};
}

TEST(MoeRouterCuda, Float32EqualsTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the router kernel is tested on the GPU machine";
  torch::manual_seed(42);
  for (const auto& [N, E, K] : std::vector<std::array<int64_t, 3>>{{1, 128, 8}, {37, 128, 8}, {3, 60, 4}, {2, 512, 32}, {4, 33, 1}}) {
    for (const bool norm : {true, false}) {
      auto logits = torch::randn({N, E}) * 2;
      const auto [e_ref, w_ref] = route_on_cpu(logits, K, norm);
      const auto gl = logits.to(kCuda);
      ASSERT_TRUE(rtp::ops::fused_moe_route_supported(gl, K));
      auto [e, w] = rtp::ops::moe_route(gl, K, norm);
      EXPECT_TRUE(torch::equal(e.cpu(), e_ref)) << N << " x " << E << " top " << K;
      EXPECT_LE((w.cpu() - w_ref).abs().max().item<float>(), 2e-7f) << N << " x " << E << " top " << K;
    }
  }
}

// bf16 logits tie often (256 values per octave); the kernel must break ties as the reference does, to the lower
// expert id, in every round. The reference routes the same logits as float32 (exact), so the ids must be equal.
TEST(MoeRouterCuda, Bf16TiesGoToTheLowerExpertIdAsInTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the router kernel is tested on the GPU machine";
  torch::manual_seed(44);
  for (const auto& [N, E, K] : std::vector<std::array<int64_t, 3>>{{300, 128, 8}, {64, 60, 4}, {16, 512, 32}}) {
    // Coarse logits (multiples of 1/4 in [-2, 2]): many exact ties inside every token's top-k.
    const auto logits = (torch::randint(-8, 9, {N, E}) / 4.0).to(torch::kBFloat16);
    const auto l32 = logits.to(torch::kFloat32).contiguous();
    const auto [e_ref, w_ref] = route_on_cpu(l32, K, true);
    auto [e, w] = rtp::ops::moe_route(logits.to(kCuda), K, true);
    EXPECT_TRUE(torch::equal(e.cpu(), e_ref)) << N << " x " << E << " top " << K;
    // bf16 weights: one rounding of the float32 reference (the kernel sums in float32, the reference in double).
    EXPECT_TRUE((w.cpu().to(torch::kFloat32) - w_ref).abs().le(w_ref.abs() / 128 + 1e-6).all().item<bool>());
    auto [e32, w32] = rtp::ops::moe_route(l32.to(kCuda), K, true);
    EXPECT_TRUE(torch::equal(e32.cpu(), e_ref)) << "float32, " << N << " x " << E << " top " << K;
  }
}

TEST(MoeRouterCuda, Bf16GivesAValidTopKWithinTwiceEagerError) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the router kernel is tested on the GPU machine";
  torch::manual_seed(43);
  for (const int64_t N : {1, 8, 300}) {
    const int64_t E = 128, K = 8;
    auto logits = (torch::randn({N, E}) * 2).to(kCuda, torch::kBFloat16);
    auto [e, w] = rtp::ops::moe_route(logits, K, true);
    // Eager, as the model ran it.
    auto probs = torch::softmax(logits, -1, torch::kFloat32);
    auto [ew, ee] = torch::topk(probs, K, -1);
    ew = (ew / ew.sum(-1, true)).to(torch::kBFloat16);
    // Valid top-k: the least probable selected expert is at least as probable as the most probable unselected one.
    auto p64 = torch::softmax(logits.to(torch::kFloat64), -1);
    auto selected = torch::zeros({N, E}, torch::TensorOptions(torch::kBool).device(kCuda)).scatter_(1, e, true);
    const auto min_sel = p64.masked_fill(~selected, 2.0).amin(-1);
    const auto max_unsel = p64.masked_fill(selected, -1.0).amax(-1);
    EXPECT_TRUE((min_sel >= max_unsel).all().item<bool>()) << N << " tokens";
    // Weights against the float64 routing of the same experts.
    auto ref = p64.gather(1, e);
    ref = ref / ref.sum(-1, true);
    auto eref = p64.gather(1, ee);
    eref = eref / eref.sum(-1, true);
    const double err = (w.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double eager_err = (ew.to(torch::kFloat64) - eref).abs().max().item<double>();
    const double same = (e == ee).to(torch::kFloat64).mean().item<double>();
    std::cout << N << " tokens x 128 experts, top 8, bf16: max |weight err| " << err << " (eager " << eager_err
              << "), expert ids equal to eager's " << same << "\n";
    EXPECT_LE(err, 2 * eager_err + 1e-6);
    // Tied probabilities (common with bf16 logits) may come in another order than eager's, or, tied at the k-th
    // place, be other experts; the weights, sorted, agree within one bf16 rounding either way.
    const auto ws = std::get<0>(w.to(torch::kFloat64).sort(-1)), ews = std::get<0>(ew.to(torch::kFloat64).sort(-1));
    EXPECT_TRUE(((ws - ews).abs() <= ews.abs() / 256 + 1e-12).all().item<bool>()) << N << " tokens";
  }
}

}  // namespace
