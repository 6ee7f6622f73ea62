#include "layer_breakdown.h"

#include <torch/torch.h>

#include <functional>
#include <map>

#include "rtp/core/error.h"
#include "rtp/model/attention_seam.h"
#include "rtp/model/rope.h"
#include "rtp/ops/moe_decode.h"
#include "rtp/ops/moe_router.h"
#include "rtp/ops/rms_norm.h"
#include "rtp/ops/sparse_attention.h"
#include "rtp/ops/sparse_token_store.h"
#include "rtp/ops/swiglu.h"
#include "rtp/sparse/sparse_attention.h"

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::bench {

namespace {

// Microseconds per call of `op` inside a CUDA graph of `reps` calls.
double time_in_graph(const std::function<void()>& op, int reps, torch::Device device) {
#ifdef RTPURBO_WITH_CUDA
  op();  // outside any capture: cuBLAS handles and workspaces
  torch::cuda::synchronize();
  auto side = c10::cuda::getStreamFromPool(false, device.index());
  at::cuda::CUDAGraph graph;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    for (int r = 0; r < reps; ++r) op();
    graph.capture_end();
  }
  graph.replay();
  torch::cuda::synchronize();
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  const int replays = 20;
  auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  start.record(stream);
  for (int i = 0; i < replays; ++i) graph.replay();
  stop.record(stream);
  stop.synchronize();
  return 1e3 * start.elapsed_time(stop) / (replays * reps);
#else
  (void)op, (void)reps, (void)device;
  RTP_THROW("the layer breakdown needs a CUDA build");
#endif
}

int64_t bytes_of(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

}  // namespace

std::vector<OpTiming> time_layer_ops(const model::Qwen3Model& model, int64_t kv_len,
                                     const sparse::SparseSettings& settings, int reps) {
  RTP_CHECK(model.device().is_cuda(), "layer breakdown: the model must be on a GPU");
  torch::NoGradGuard no_grad;
  const auto& c = model.config();
  const auto dev = model.device();
  const auto opt = torch::TensorOptions(model.dtype()).device(dev);
  const int64_t H = c.hidden_size, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  const int64_t G = Hq / Hkv, e = static_cast<int64_t>(torch::elementSize(model.dtype()));
  std::map<std::string, torch::Tensor> w;
  for (const auto& [name, t] : model.named_parameters()) w[name] = t;
  const std::string pre = "model.layers.0.";
  const double eps = c.rms_norm_eps;
  std::vector<OpTiming> out;
  const auto add = [&](const std::string& group, const std::string& op, int64_t bytes, const std::function<void()>& f) {
    out.push_back({group, op, time_in_graph(f, reps, dev), bytes});
  };

  // Attention half.
  auto x = torch::randn({1, 1, H}, opt), d = torch::randn({1, 1, H}, opt);
  add("attention", "residual add + input RMSNorm", 4 * H * e + H * e,
      [&] { ops::add_rms_norm(x, d, w[pre + "input_layernorm.weight"], eps); });
  const std::string a = pre + "self_attn.";
  auto wqkv = torch::cat({w[a + "q_proj.weight"], w[a + "k_proj.weight"], w[a + "v_proj.weight"]}, 0);
  auto h = torch::randn({1, 1, H}, opt);
  add("attention", "q/k/v projection", bytes_of(wqkv) + (H + wqkv.size(0)) * e, [&] { at::linear(h, wqkv); });
  auto qkv = torch::randn({1, 1, wqkv.size(0)}, opt);
  auto q = qkv.narrow(-1, 0, Hq * D).view({1, 1, Hq, D}), k = qkv.narrow(-1, Hq * D, Hkv * D).view({1, 1, Hkv, D});
  const auto rope = model::rope_tables(c, kv_len, 1, dev);
  add("attention", "q/k RMSNorm + RoPE", 5 * (Hq + Hkv) * D * e,
      [&] { ops::rms_norm_rope_qk(q, w[a + "q_norm.weight"], k, w[a + "k_norm.weight"], rope.cos, rope.sin, eps); });
  // Dense: the token into the cache (two indexed copies), attention over kv_len tokens.
  const int64_t cap = kv_len + 64;
  auto kbuf = torch::randn({1, Hkv, cap, D}, opt), vbuf = torch::randn({1, Hkv, cap, D}, opt);
  auto pos = torch::full({1}, kv_len - 1, torch::TensorOptions(torch::kInt64).device(dev));
  auto k1 = torch::randn({1, Hkv, 1, D}, opt), v1 = torch::randn({1, Hkv, 1, D}, opt);
  add("attention", "dense: token store (2 indexed copies)", 4 * Hkv * D * e, [&] {
    kbuf.index_copy_(2, pos, k1);
    vbuf.index_copy_(2, pos, v1);
  });
  model::LayerAttentionInputs in;
  in.layer = 0;
  in.q = torch::randn({1, Hq, 1, D}, opt);
  in.k = kbuf.narrow(2, 0, kv_len);
  in.v = vbuf.narrow(2, 0, kv_len);
  in.scale = 1.0 / std::sqrt(static_cast<double>(D));
  add("attention", "dense: attention over " + std::to_string(kv_len) + " keys", 2 * Hkv * kv_len * D * e,
      [&] { model::DenseAttention().attend(in); });
  // Sparse: one retrieval KV head, the others streaming; the token store kernel, then the decode op.
  const int64_t I = 16, ring = settings.sink + settings.window;
  std::vector<kernels::HeadKind> kinds(static_cast<size_t>(Hkv), kernels::HeadKind::STREAMING);
  kinds[0] = kernels::HeadKind::RETRIEVAL;
  auto full_k = torch::randn({1, cap, D}, opt), full_v = torch::randn({1, cap, D}, opt);
  auto index_k = torch::randn({1, cap, I}, opt.dtype(torch::kBFloat16));
  auto ring_k = torch::randn({Hkv - 1, ring, D}, opt), ring_v = torch::randn({Hkv - 1, ring, D}, opt);
  auto kw = torch::randn({1, I, D}, opt) / 8, qw = torch::randn({G, I, D}, opt) / 8;
  auto index_q = torch::randn({1, G, I}, opt);
  auto slot = torch::full({1}, (kv_len - 1) % ring, torch::TensorOptions(torch::kInt64).device(dev));
  if (Hkv > 1 && Hkv <= kernels::kTokenStoreMaxKvHeads) {
    kernels::SparseTokenStoreParams p;
    p.dtype = model.dtype() == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
    p.index_dtype = kernels::DType::BF16;
    p.kv_heads = static_cast<int>(Hkv), p.group_size = static_cast<int>(G), p.head_dim = static_cast<int>(D);
    p.index_dim = static_cast<int>(I);
    for (int64_t g = 0; g < Hkv; ++g) {
      p.retrieval_slot_of[g] = static_cast<int8_t>(g == 0 ? 0 : -1);
      p.streaming_slot_of[g] = static_cast<int8_t>(g == 0 ? -1 : g - 1);
    }
    auto kq = torch::randn({Hq + Hkv, D}, opt);
    p.k = p.index_k_src = kq.data_ptr(), p.k_head_stride = p.index_k_src_head_stride = D;
    p.v = p.index_q_src = kq.data_ptr(), p.v_head_stride = p.index_q_src_head_stride = D;
    p.full_k = full_k.data_ptr(), p.full_v = full_v.data_ptr(), p.index_keys = index_k.data_ptr();
    p.index_k_weight = kw.data_ptr(), p.index_q_weight = qw.data_ptr(), p.index_q_out = index_q.data_ptr();
    p.full_capacity = cap;
    p.ring_k = ring_k.data_ptr(), p.ring_v = ring_v.data_ptr(), p.ring_capacity = ring;
    p.position = pos.data_ptr<int64_t>(), p.ring_slot = slot.data_ptr<int64_t>();
    add("attention", "sparse: token store (1 kernel)", (4 * Hkv + (1 + G) * I * 2) * D * e,
        [&, p] { ops::sparse_token_store(p, dev); });
    ops::DecodeInputs di;
    di.q = torch::randn({Hq, D}, opt);
    di.k_full = full_k, di.v_full = full_v, di.index_q = index_q, di.index_k = index_k;
    di.k_ring = ring_k, di.v_ring = ring_v;
    di.kv_len = kv_len;
    di.out = torch::empty({Hq, D}, opt);
    di.selected = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
    const auto cfg = sparse::to_ops_config(settings);
    ops::sparse_decode(di, kinds, cfg);
    const int64_t selected = di.selected.item<int32_t>();
    add("attention",
        "sparse: decode (" + std::to_string(selected) + " of " + std::to_string(kv_len) + " tokens, " +
            std::to_string(Hkv - 1) + " ring heads)",
        kv_len * I * 2 + selected * 2 * D * e + (Hkv - 1) * std::min(kv_len, ring) * 2 * D * e,
        [&] { ops::sparse_decode(di, kinds, cfg); });
  }
  auto attn = torch::randn({1, 1, Hq * D}, opt);
  add("attention", "o projection", bytes_of(w[a + "o_proj.weight"]) + (Hq * D + H) * e,
      [&] { at::linear(attn, w[a + "o_proj.weight"]); });
  add("attention", "residual add + post-attention RMSNorm", 5 * H * e,
      [&] { ops::add_rms_norm(x, d, w[pre + "post_attention_layernorm.weight"], eps); });

  // MLP half.
  const std::string m = pre + "mlp.";
  if (!c.layer_is_moe(0)) {
    auto wgu = torch::cat({w[m + "gate_proj.weight"], w[m + "up_proj.weight"]}, 0);
    const int64_t In = c.intermediate_size;
    add("dense MLP", "gate/up projection", bytes_of(wgu) + (H + 2 * In) * e, [&] { at::linear(h, wgu); });
    auto gu = torch::randn({1, 1, 2 * In}, opt);
    add("dense MLP", "SwiGLU", 3 * In * e, [&] { ops::swiglu(gu.narrow(-1, 0, In), gu.narrow(-1, In, In)); });
    auto act = torch::randn({1, 1, In}, opt);
    add("dense MLP", "down projection", bytes_of(w[m + "down_proj.weight"]) + (In + H) * e,
        [&] { at::linear(act, w[m + "down_proj.weight"]); });
  } else {
    const auto& gate = w[m + "gate.weight"];
    auto flat = torch::randn({1, H}, opt);
    add("MoE", "router logits", bytes_of(gate) + (H + c.num_experts) * e, [&] { at::linear(flat, gate); });
    auto logits = torch::randn({1, c.num_experts}, opt);
    add("MoE", "routing (softmax, top-k)", c.num_experts * e, [&] { ops::moe_route(logits, c.num_experts_per_tok, c.norm_topk_prob); });
    auto [ids, rw] = ops::moe_route(logits, c.num_experts_per_tok, c.norm_topk_prob);
    const auto& gu = w[m + "experts.gate_up_proj"];
    const auto& dn = w[m + "experts.down_proj"];
    const int64_t expert_bytes = (bytes_of(gu) + bytes_of(dn)) / c.num_experts;
    add("MoE", "experts (" + std::to_string(c.num_experts_per_tok) + " of " + std::to_string(c.num_experts) + ")",
        c.num_experts_per_tok * expert_bytes, [&] { ops::moe_decode(flat, ids, rw, gu, dn); });
  }
  // Once per token.
  const auto& head = c.tie_word_embeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
  add("head", "residual add + final RMSNorm", 5 * H * e, [&] { ops::add_rms_norm(x, d, w["model.norm.weight"], eps); });
  add("head", "LM head", bytes_of(head) + H * e + c.vocab_size * 4, [&] { at::linear(h, head).to(torch::kFloat32); });
  return out;
}

}  // namespace rtp::bench
