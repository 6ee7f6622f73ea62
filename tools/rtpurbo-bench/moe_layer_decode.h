#pragma once
// The rest of one Qwen3-30B-A3B decoder layer around its attention, for one decoded token, computed the way the
// model's forward computes it (lib/src/torch/model/qwen3.cpp): input RMSNorm, q/k/v projections, q_norm/k_norm,
// o projection and residual, post-attention RMSNorm, router softmax and top-8 of 128 experts (indices read on the
// host, as the model's expert loop does), 8 SwiGLU expert MLPs, weighted sum. RoPE (elementwise on 5K values) is
// left out. A whole-layer decode step is this plus the same layer's attention, timed apart by the bench.
// run_device_routed() is the same step without the host round trip (CUDA-graph capturable).
#include <torch/torch.h>

#include <cmath>
#include <cstdint>

namespace rtp::bench {

struct MoeLayerShape {
  int64_t hidden = 2048, q_heads = 32, kv_heads = 4, head_dim = 128, experts = 128, active = 8, moe_inter = 768;
};

class MoeLayerDecode {
 public:
  MoeLayerDecode(const MoeLayerShape& s, uint64_t seed) : s_(s) {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCUDA)).clone();
    gen.set_current_seed(seed);
    const auto bf = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    auto w = [&](std::vector<int64_t> shape) { return torch::empty(shape, bf).normal_(0.0, 0.02, gen); };
    const int64_t H = s.hidden, D = s.head_dim;
    wq_ = w({s.q_heads * D, H});
    wk_ = w({s.kv_heads * D, H});
    wv_ = w({s.kv_heads * D, H});
    wo_ = w({H, s.q_heads * D});
    router_ = w({s.experts, H});
    gate_up_ = w({s.experts, 2 * s.moe_inter, H});
    down_ = w({s.experts, H, s.moe_inter});
    norm_ = torch::ones({H}, bf);
    head_norm_ = torch::ones({D}, bf);
  }

  // x [1, hidden]: the residual stream; attn [1, q_heads * head_dim]: stands in for the attention's output.
  torch::Tensor run(const torch::Tensor& x, const torch::Tensor& attn) const {
    const Routed r = attention_and_router(x, attn);
    auto idx = r.experts.cpu();  // the model's expert loop needs the indices on the host: a sync per layer
    auto out = torch::zeros_like(r.x2);
    for (int64_t a = 0; a < s_.active; ++a) {
      const int64_t e = idx[0][a].item<int64_t>();
      auto gu = at::linear(r.h2, gate_up_[e]).chunk(2, -1);
      out = out + at::linear(torch::silu(gu[0]) * gu[1], down_[e]) * r.weights.narrow(1, a, 1);
    }
    return r.x2 + out;
  }

  // The same step with the routing kept on the GPU (no host sync, so a CUDA graph can hold it): the 8 chosen
  // experts' weights gathered by index_select and applied with batched matrix products. The gather copies
  // them once more, so this reads ~2x the expert weights of run(); what it removes is the host round trip and
  // the launch gaps after it.
  torch::Tensor run_device_routed(const torch::Tensor& x, const torch::Tensor& attn) const {
    const Routed r = attention_and_router(x, attn);
    auto e = r.experts[0];
    auto hv = r.h2.expand({s_.active, s_.hidden}).unsqueeze(-1);                         // [8, H, 1]
    auto gu = torch::bmm(gate_up_.index_select(0, e), hv).squeeze(-1).chunk(2, -1);  // [8, I] x 2
    auto act = (torch::silu(gu[0]) * gu[1]).unsqueeze(-1);                            // [8, I, 1]
    auto y = torch::bmm(down_.index_select(0, e), act).squeeze(-1);                    // [8, H]
    return r.x2 + (y * r.weights[0].unsqueeze(-1)).sum(0, true);
  }

  // Weight bytes one token reads: the DRAM floor of the step.
  double weight_bytes() const {
    const double H = double(s_.hidden), qd = double(s_.q_heads * s_.head_dim), kvd = double(s_.kv_heads * s_.head_dim);
    return 2.0 * (H * qd + 2 * H * kvd + qd * H + double(s_.experts) * H +
                  double(s_.active) * (2.0 * s_.moe_inter * H + H * s_.moe_inter));
  }

 private:
  struct Routed {
    torch::Tensor x2, h2;               // residual after the attention block; its post-attention RMSNorm
    torch::Tensor experts, weights;     // top-k expert ids [1, k] and their renormalised weights (bf16)
  };

  // Everything before the experts: projections and norms around the attention, the router and its top-k.
  Routed attention_and_router(const torch::Tensor& x, const torch::Tensor& attn) const {
    auto h = rms(x, norm_);
    // q, k, v would go to the attention and the cache; computed so that the step pays for them.
    auto q = rms(at::linear(h, wq_).view({s_.q_heads, s_.head_dim}), head_norm_);
    auto k = rms(at::linear(h, wk_).view({s_.kv_heads, s_.head_dim}), head_norm_);
    auto v = at::linear(h, wv_);
    (void)q, (void)k, (void)v;
    Routed r;
    r.x2 = x + at::linear(attn, wo_);
    r.h2 = rms(r.x2, norm_);
    auto probs = torch::softmax(at::linear(r.h2, router_), -1, torch::kFloat32);
    auto [top_w, top_i] = torch::topk(probs, s_.active, -1);
    r.experts = top_i;
    r.weights = (top_w / top_w.sum(-1, true)).to(torch::kBFloat16);
    return r;
  }

  static torch::Tensor rms(const torch::Tensor& x, const torch::Tensor& w) {
    auto xf = x.to(torch::kFloat32);
    return w * (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-6)).to(x.dtype());
  }

  MoeLayerShape s_;
  torch::Tensor wq_, wk_, wv_, wo_, router_, gate_up_, down_, norm_, head_norm_;
};

}  // namespace rtp::bench
