#pragma once
// What the CPU and GPU tests of ops::moe_grouped compare it with: the block by its definition in float64, one
// (token, slot) at a time, and the grouped path it replaced in the model (a loop over experts with an indexed add
// into the output in the tensors' dtype), the "naive" implementation whose bf16 error bounds the new one's.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace rtp::testing {

struct MoeCase {
  torch::Tensor x, expert, weight, gate_up, down;  // float32 on the CPU
};

// N tokens of H, K slots over E experts of I; experts drawn so that some get no token when N K is small.
inline MoeCase make_moe_case(int64_t N, int64_t K, int64_t E, int64_t H, int64_t I, uint64_t seed) {
  torch::manual_seed(seed);
  MoeCase c;
  c.x = torch::randn({N, H});
  c.expert = torch::argsort(torch::rand({N, E}), /*dim=*/int64_t{1}, /*descending=*/false).narrow(1, 0, K).contiguous();  // K distinct experts per token
  c.weight = torch::softmax(torch::randn({N, K}), 1);
  c.gate_up = torch::randn({E, 2 * I, H}) / std::sqrt(double(H));
  c.down = torch::randn({E, H, I}) / std::sqrt(double(I));
  return c;
}

inline torch::Tensor moe_by_definition(const MoeCase& c) {
  const int64_t N = c.x.size(0), K = c.expert.size(1), I = c.down.size(2);
  auto out = torch::zeros({N, c.x.size(1)}, torch::kFloat64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < K; ++s) {
      const int64_t e = c.expert[n][s].item<int64_t>();
      auto gu = torch::mv(c.gate_up[e].to(torch::kFloat64), c.x[n].to(torch::kFloat64));
      auto a = torch::silu(gu.narrow(0, 0, I)) * gu.narrow(0, I, I);
      out[n] += c.weight[n][s].item<double>() * torch::mv(c.down[e].to(torch::kFloat64), a);
    }
  return out;
}

// The model's MoE path before moe_grouped, with the inputs in `opt`'s dtype and device.
inline torch::Tensor moe_expert_loop(const MoeCase& c, torch::TensorOptions opt) {
  const auto x = c.x.to(opt), gate_up = c.gate_up.to(opt), down = c.down.to(opt), w = c.weight.to(opt);
  const int64_t K = c.expert.size(1), I = c.down.size(2);
  auto out = torch::zeros_like(x);
  auto flat = c.expert.reshape(-1);
  for (int64_t e = 0; e < c.gate_up.size(0); ++e) {
    auto slots = (flat == e).nonzero().reshape(-1);
    if (slots.numel() == 0) continue;
    auto tokens = torch::div(slots, K, "floor").to(opt.device());
    auto gu = torch::matmul(x.index_select(0, tokens), gate_up[e].t());
    auto y = torch::matmul(torch::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I), down[e].t());
    out.index_add_(0, tokens, y * w.reshape(-1).index_select(0, slots.to(opt.device())).unsqueeze(-1));
  }
  return out;
}

// The block's gradients by autograd through its definition, vectorised (each slot's expert weights gathered), in the
// case's tensors cast to `opt`: the loss is sum(out * probe). Returns the gradients of x, weight, gate_up and down.
// With `block` the implementation under test instead of the definition.
template <typename Block>
std::vector<torch::Tensor> moe_gradients(const MoeCase& c, const torch::Tensor& probe, torch::TensorOptions opt,
                                         Block block) {
  // Fresh leaves: a cast to the case's own dtype would hand back the case's tensor itself.
  const auto leaf = [&](const torch::Tensor& t) { return t.detach().to(opt, false, /*copy=*/true).requires_grad_(); };
  auto x = leaf(c.x), w = leaf(c.weight), gate_up = leaf(c.gate_up), down = leaf(c.down);
  const auto out = block(x, c.expert.to(opt.device()), w, gate_up, down);
  (out * probe.to(opt)).sum().backward();
  return {x.grad(), w.grad(), gate_up.grad(), down.grad()};
}

inline torch::Tensor moe_definition_differentiable(const torch::Tensor& x, const torch::Tensor& expert,
                                                    const torch::Tensor& w, const torch::Tensor& gate_up,
                                                    const torch::Tensor& down) {
  const int64_t N = x.size(0), K = expert.size(1), H = x.size(1), I = down.size(2);
  const auto e = expert.reshape(-1);
  const auto gu = torch::einsum("nkih,nh->nki", {gate_up.index_select(0, e).view({N, K, 2 * I, H}), x});
  const auto a = torch::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I);
  const auto y = torch::einsum("nkhi,nki->nkh", {down.index_select(0, e).view({N, K, H, I}), a});
  return (y * w.unsqueeze(-1)).sum(1);
}

}  // namespace rtp::testing
