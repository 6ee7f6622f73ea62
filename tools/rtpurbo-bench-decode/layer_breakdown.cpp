#include "layer_breakdown.h"

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <map>

#include "rtp/core/error.h"
#include "rtp/model/attention_seam.h"
#include "rtp/model/rope.h"
#include "rtp/ops/kv_token_store.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/ops/moe_decode.h"
#include "rtp/ops/moe_router.h"
#include "rtp/ops/rms_norm.h"
#include "rtp/ops/sparse_attention.h"
#include "rtp/ops/sparse_token_store.h"
#include "rtp/ops/swiglu.h"
#include "rtp/sparse/sparse_attention.h"

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
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

int64_t l2_bytes(torch::Device device) {
#ifdef RTPURBO_WITH_CUDA
  return at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->l2CacheSize;
#else
  (void)device;
  return 0;
#endif
}

// In a step each layer's weights and KV are read once; `reps` calls in a row on the same operands would find them in
// L2 (50 MB on an H100 / H200). Calls cycle through enough copies that three times L2 lies between two uses.
int copies_for(int64_t bytes, int64_t l2, int reps) {
  return static_cast<int>(std::clamp<int64_t>((3 * l2 + bytes - 1) / std::max<int64_t>(bytes, 1), 1, reps));
}

std::vector<torch::Tensor> clones(const torch::Tensor& t, int n) {
  std::vector<torch::Tensor> v{t};
  for (int i = 1; i < n; ++i) v.push_back(t.clone());
  return v;
}

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
  const int64_t l2 = l2_bytes(dev);
  // x [.., in] times a weight [out, in] as the model's decode step runs it, the weight from a ring of copies.
  const auto add_linear = [&](const std::string& group, const std::string& op, const torch::Tensor& x_in,
                              const torch::Tensor& weight) {
    const auto ws = clones(weight, copies_for(bytes_of(weight), l2, reps));
    size_t i = 0;
    add(group, op, bytes_of(weight) + (weight.size(0) + weight.size(1)) * e,
        [&, ws] { ops::project(x_in, ws[i++ % ws.size()]); });
  };
  // The same product on the GEMV kernel in a given warp layout, whatever the model's rule picks.
  const auto add_gemv = [&](const std::string& op, const torch::Tensor& x_in, const torch::Tensor& weight,
                            kernels::GemvLayout layout) {
    const auto ws = clones(weight, copies_for(bytes_of(weight), l2, reps));
    size_t i = 0;
    add("(compare)", op, bytes_of(weight) + (weight.size(0) + weight.size(1)) * e,
        [&, ws, layout] { ops::linear_decode(x_in, ws[i++ % ws.size()], layout); });
  };

  // Attention half.
  auto x = torch::randn({1, 1, H}, opt), d = torch::randn({1, 1, H}, opt);
  // After an MoE layer the model's step runs this add + norm in the experts' down pass launch (Qwen3Model::
  // gemv_epilogues().moe_add_norm): the "experts + residual add + RMSNorm" row below.
  const bool moe_norm_fused = c.layer_is_moe(0) && model.gemv_epilogues().moe_add_norm;
  add(moe_norm_fused ? "(compare)" : "attention", "residual add + input RMSNorm", 4 * H * e + H * e,
      [&] { ops::add_rms_norm(x, d, w[pre + "input_layernorm.weight"], eps); });
  // For comparison, not part of the step: the same norm without the add.
  add("(compare)", "input RMSNorm without the residual add", 3 * H * e,
      [&] { ops::rms_norm(x, w[pre + "input_layernorm.weight"], eps); });
  const std::string a = pre + "self_attn.";
  auto wqkv = torch::cat({w[a + "q_proj.weight"], w[a + "k_proj.weight"], w[a + "v_proj.weight"]}, 0);
  auto h = torch::randn({1, 1, H}, opt);
  const auto rope = model::rope_tables(c, kv_len, 1, dev);
  // The model's step runs the q/k norms and RoPE in the q/k/v projection's launch where it can (Qwen3Model::
  // gemv_epilogues); the separate form is for comparison then.
  const auto counts = torch::zeros({Hq + 2 * Hkv}, torch::TensorOptions(torch::kInt32).device(dev));
  const bool qk_fusable = ops::gemv_preferred(wqkv) &&
                          ops::gemv_qk_norm_rope_supported(h, wqkv, w[a + "q_norm.weight"], w[a + "k_norm.weight"],
                                                           rope.cos, rope.sin, Hq, Hkv, counts);
  const bool qk_fused = qk_fusable && model.gemv_epilogues().qk_norm_rope;
  if (qk_fusable) {
    const auto ws = clones(wqkv, copies_for(bytes_of(wqkv), l2, reps));
    size_t i = 0;
    add(qk_fused && !model.gemv_epilogues().kv_store ? "attention" : "(compare)",
        "q/k/v projection + q/k RMSNorm + RoPE (one launch)",
        bytes_of(wqkv) + (wqkv.size(0) + wqkv.size(1)) * e + 4 * (Hq + Hkv) * D * e, [&, ws] {
          ops::linear_decode_qk_norm_rope(h, ws[i++ % ws.size()], w[a + "q_norm.weight"], w[a + "k_norm.weight"],
                                          rope.cos, rope.sin, Hq, Hkv, eps, counts);
        });
  }
  add_linear(qk_fused ? "(compare)" : "attention", "q/k/v projection", h, wqkv);
  add_gemv("q/k/v projection on the GEMV, split rows", h, wqkv, kernels::GemvLayout::SplitRows);
  add_gemv("q/k/v projection on the GEMV, whole rows per warp", h, wqkv, kernels::GemvLayout::WholeRows);
  auto qkv = torch::randn({1, 1, wqkv.size(0)}, opt);
  auto q = qkv.narrow(-1, 0, Hq * D).view({1, 1, Hq, D}), k = qkv.narrow(-1, Hq * D, Hkv * D).view({1, 1, Hkv, D});
  add(qk_fused ? "(compare)" : "attention", "q/k RMSNorm + RoPE", 5 * (Hq + Hkv) * D * e,
      [&] { ops::rms_norm_rope_qk(q, w[a + "q_norm.weight"], k, w[a + "k_norm.weight"], rope.cos, rope.sin, eps); });
  // Dense: the token into the cache (two indexed copies), attention over kv_len tokens.
  const int64_t cap = kv_len + 64;
  auto kbuf = torch::randn({1, Hkv, cap, D}, opt), vbuf = torch::randn({1, Hkv, cap, D}, opt);
  auto pos = torch::full({1}, kv_len - 1, torch::TensorOptions(torch::kInt64).device(dev));
  auto k1 = torch::randn({1, Hkv, 1, D}, opt), v1 = torch::randn({1, Hkv, 1, D}, opt);
  const bool store_fused = qk_fused && model.gemv_epilogues().kv_store;
  add(store_fused ? "(compare)" : "attention", "dense: token store (1 kernel)", 4 * Hkv * D * e,
      [&] { ops::kv_token_store(kbuf, vbuf, k1, v1, pos); });
  if (qk_fusable) {
    // The token store in the q/k/v projection's launch (GemvEpilogues::kv_store): in the step where on, it replaces
    // both rows above (its time minus the fused projection's row is what the store costs there).
    const auto ws = clones(wqkv, copies_for(bytes_of(wqkv), l2, reps));
    size_t i = 0;
    const ops::QkvTokenStore store{kbuf, vbuf, pos};
    add(store_fused ? "attention" : "(compare)", "q/k/v projection + q/k RMSNorm + RoPE + token store (one launch)",
        bytes_of(wqkv) + (wqkv.size(0) + wqkv.size(1)) * e + 6 * (Hq + Hkv) * D * e, [&, ws, store] {
          ops::linear_decode_qk_norm_rope(h, ws[i++ % ws.size()], w[a + "q_norm.weight"], w[a + "k_norm.weight"],
                                          rope.cos, rope.sin, Hq, Hkv, eps, counts, kernels::GemvLayout::Auto, store);
        });
  }
  {
    const int n = copies_for(2 * bytes_of(kbuf), l2, reps);
    std::vector<model::LayerAttentionInputs> ins;
    std::vector<torch::Tensor> kbufs, vbufs;
    for (int c_i = 0; c_i < n; ++c_i) {
      model::LayerAttentionInputs in;
      in.layer = 0;
      in.q = torch::randn({1, Hq, 1, D}, opt);
      kbufs.push_back(c_i == 0 ? kbuf : kbuf.clone());
      vbufs.push_back(c_i == 0 ? vbuf : vbuf.clone());
      in.k = kbufs.back().narrow(2, 0, kv_len);
      in.v = vbufs.back().narrow(2, 0, kv_len);
      in.scale = 1.0 / std::sqrt(static_cast<double>(D));
      ins.push_back(in);
    }
    size_t i = 0;
    // The step's dense attention where the decode kernel takes the shape (bf16, head_dim 64 / 128): the CUDA decode
    // kernel with every head DENSE, the length read from device memory, the grid sized for the capacity (as
    // KVCache::attend_token_on_device); FlashAttention, which the step used before, for comparison.
    const bool device_kernel = model.dtype() == torch::kBFloat16 && (D == 64 || D == 128) && G <= 16;
    add(device_kernel ? "(compare)" : "attention",
        "dense: FlashAttention over " + std::to_string(kv_len) + " keys", 2 * Hkv * kv_len * D * e,
        [&] { model::DenseAttention().attend(ins[i++ % ins.size()]); });
    if (device_kernel) {
      std::vector<ops::DecodeInputs> dis;
      for (size_t c_i = 0; c_i < ins.size(); ++c_i) {
        ops::DecodeInputs di;
        di.q = ins[c_i].q[0].select(1, 0);
        di.k_full = kbufs[c_i][0], di.v_full = vbufs[c_i][0];  // [Hkv, cap, D]
        di.kv_len = cap;
        di.position = pos;
        di.out = torch::empty({Hq, D}, opt);
        dis.push_back(di);
      }
      const std::vector<kernels::HeadKind> dense_kinds(static_cast<size_t>(Hkv), kernels::HeadKind::DENSE);
      size_t j = 0;
      add("attention", "dense: decode kernel over " + std::to_string(kv_len) + " keys (length on the device)",
          2 * Hkv * kv_len * D * e, [&] { ops::sparse_decode(dis[j++ % dis.size()], dense_kinds, ops::SparseConfig{}); });
      // Other splits for comparison (DecodeTuning::dense_keys_per_block), and three K/V tile stages per block
      // (DecodeTuning::attend_tile_stages) at the default split and at 1024 keys.
      for (const int keys : {64, 128, 256, 512, 1024}) {
        ops::SparseConfig tuned;
        tuned.decode_tuning.dense_keys_per_block = keys;
        add("(compare)", "dense: decode kernel, " + std::to_string(keys) + " keys per block", 2 * Hkv * kv_len * D * e,
            [&, tuned] { ops::sparse_decode(dis[j++ % dis.size()], dense_kinds, tuned); });
      }
      for (const int keys : {0, 1024}) {
        ops::SparseConfig tuned;
        tuned.decode_tuning.dense_keys_per_block = keys;
        tuned.decode_tuning.attend_tile_stages = 3;
        add("(compare)",
            "dense: decode kernel, 3 tile stages, " + (keys ? std::to_string(keys) : std::string("default")) +
                " keys per block",
            2 * Hkv * kv_len * D * e, [&, tuned] { ops::sparse_decode(dis[j++ % dis.size()], dense_kinds, tuned); });
      }
    }
  }
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
    const int n = copies_for(2 * bytes_of(full_k) + bytes_of(index_k) + 2 * bytes_of(ring_k), l2, reps);
    std::vector<ops::DecodeInputs> dis;
    for (int c_i = 0; c_i < n; ++c_i) {
      ops::DecodeInputs di;
      di.q = torch::randn({Hq, D}, opt);
      const auto cp = [&](const torch::Tensor& t) { return c_i == 0 ? t : t.clone(); };
      di.k_full = cp(full_k), di.v_full = cp(full_v), di.index_q = index_q, di.index_k = cp(index_k);
      di.k_ring = cp(ring_k), di.v_ring = cp(ring_v);
      di.kv_len = kv_len;
      di.out = torch::empty({Hq, D}, opt);
      di.selected = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
      dis.push_back(di);
    }
    const auto cfg = sparse::to_ops_config(settings);
    ops::sparse_decode(dis[0], kinds, cfg);
    const int64_t selected = dis[0].selected.item<int32_t>();
    size_t i = 0;
    const std::string what = "(" + std::to_string(selected) + " of " + std::to_string(kv_len) + " tokens, " +
                             std::to_string(Hkv - 1) + " ring heads";
    const int64_t moved = kv_len * I * 2 + selected * 2 * D * e + (Hkv - 1) * std::min(kv_len, ring) * 2 * D * e;
    // As the step runs it (SparseCache::attend_token_on_device): the length from device memory, grids for the
    // capacity; and with the host's length, as before, for comparison.
    auto dis_dev = dis;
    for (auto& di : dis_dev) di.position = pos, di.kv_len = cap;
    add("(compare)", "sparse: decode " + what + ", host length)", moved,
        [&] { ops::sparse_decode(dis[i++ % dis.size()], kinds, cfg); });
    add("attention", "sparse: decode " + what + ", length on the device)", moved,
        [&] { ops::sparse_decode(dis_dev[i++ % dis_dev.size()], kinds, cfg); });
    // Other splits of the retrieval head's passes for comparison (candidates per attend block, tokens per index block;
    // 0 = the length's default, kernels/src/decode_splits.h).
    const auto split_name = [](int n) { return n ? std::to_string(n) : std::string("default"); };
    for (const auto& [cands, toks] :
         std::vector<std::pair<int, int>>{{256, 0}, {512, 0}, {1024, 0}, {0, 256}, {0, 512}, {1024, 256}}) {
      auto tuned = cfg;
      tuned.decode_tuning.retrieval_candidates_per_block = cands;
      tuned.decode_tuning.index_tokens_per_block = toks;
      add("(compare)",
          "sparse: decode, " + split_name(cands) + " candidates / " + split_name(toks) + " index tokens per block", moved,
          [&, tuned] { ops::sparse_decode(dis_dev[i++ % dis_dev.size()], kinds, tuned); });
    }
    {
      auto tuned = cfg;
      tuned.decode_tuning.attend_tile_stages = 3;
      add("(compare)", "sparse: decode, 3 tile stages", moved,
          [&, tuned] { ops::sparse_decode(dis_dev[i++ % dis_dev.size()], kinds, tuned); });
    }
    // The streaming heads alone (the retrieval head's passes and attention out of the call).
    {
      std::vector<kernels::HeadKind> all_ring(static_cast<size_t>(Hkv - 1), kernels::HeadKind::STREAMING);
      std::vector<ops::DecodeInputs> ring_only;
      for (const auto& di : dis_dev) {
        auto r = di;
        r.q = di.q.narrow(0, G, (Hkv - 1) * G), r.out = di.out.narrow(0, G, (Hkv - 1) * G);
        r.k_full = r.v_full = r.index_q = r.index_k = torch::Tensor();
        ring_only.push_back(r);
      }
      add("(compare)", "sparse: the " + std::to_string(Hkv - 1) + " ring heads alone", (Hkv - 1) * std::min(kv_len, ring) * 2 * D * e,
          [&] { ops::sparse_decode(ring_only[i++ % ring_only.size()], all_ring, cfg); });
    }
  }
  auto attn = torch::randn({1, 1, Hq * D}, opt);
  // The model's step runs the o projection with the post-attention add + RMSNorm in its launch where it fuses them
  // (Qwen3Model::gemv_epilogues, at most add_norm_max_m outputs); the other form is for comparison.
  const auto& epi = model.gemv_epilogues();
  const bool fused = epi.add_norm && H <= (epi.add_norm_max_m > 0 ? epi.add_norm_max_m : ops::kFusedAddNormMaxM);
  const std::string in_step = "attention", other = "(compare)";
  {
    const auto& ow = w[a + "o_proj.weight"];
    const auto ws = clones(ow, copies_for(bytes_of(ow), l2, reps));
    const auto done = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
    size_t i = 0;
    add(fused ? in_step : other, "o projection + residual add + post-attention RMSNorm (one launch)",
        bytes_of(ow) + (ow.size(0) + ow.size(1)) * e + 5 * H * e, [&, ws] {
          ops::linear_decode_add_rms_norm(attn, ws[i++ % ws.size()], x, w[pre + "post_attention_layernorm.weight"], eps,
                                          done);
        });
  }
  add_linear(fused ? other : in_step, "o projection", attn, w[a + "o_proj.weight"]);
  add_gemv("o projection on the GEMV, split rows", attn, w[a + "o_proj.weight"], kernels::GemvLayout::SplitRows);
  add_gemv("o projection on the GEMV, whole rows per warp", attn, w[a + "o_proj.weight"], kernels::GemvLayout::WholeRows);
  add(fused ? other : in_step, "residual add + post-attention RMSNorm", 5 * H * e,
      [&] { ops::add_rms_norm(x, d, w[pre + "post_attention_layernorm.weight"], eps); });

  // MLP half.
  const std::string m = pre + "mlp.";
  if (!c.layer_is_moe(0)) {
    auto wgu = torch::cat({w[m + "gate_proj.weight"], w[m + "up_proj.weight"]}, 0);
    const int64_t In = c.intermediate_size;
    // SwiGLU in the gate/up projection's launch where the model runs it so (Qwen3Model::gemv_epilogues().swiglu).
    const bool swiglu_fused =
        model.gemv_epilogues().swiglu && ops::gemv_preferred(wgu) && ops::gemv_swiglu_supported(h, wgu);
    {
      const auto ws = clones(wgu, copies_for(bytes_of(wgu), l2, reps));
      size_t i = 0;
      add(swiglu_fused ? "dense MLP" : "(compare)", "gate/up projection + SwiGLU (one launch)",
          bytes_of(wgu) + (wgu.size(1) + In) * e, [&, ws] { ops::linear_decode_swiglu(h, ws[i++ % ws.size()]); });
    }
    add_linear(swiglu_fused ? "(compare)" : "dense MLP", "gate/up projection", h, wgu);
    add_gemv("gate/up projection on the GEMV, whole rows per warp", h, wgu, kernels::GemvLayout::WholeRows);
    add_gemv("gate/up projection on the GEMV, split rows", h, wgu, kernels::GemvLayout::SplitRows);
    {
      const auto ws = clones(wgu, copies_for(bytes_of(wgu), l2, reps));
      size_t i = 0;
      add("(compare)", "gate/up projection with cuBLAS", bytes_of(wgu) + (wgu.size(0) + wgu.size(1)) * e,
          [&, ws] { at::linear(h, ws[i++ % ws.size()]); });
    }
    auto gu = torch::randn({1, 1, 2 * In}, opt);
    add(swiglu_fused ? "(compare)" : "dense MLP", "SwiGLU", 3 * In * e,
        [&] { ops::swiglu(gu.narrow(-1, 0, In), gu.narrow(-1, In, In)); });
    auto act = torch::randn({1, 1, In}, opt);
    add_linear("dense MLP", "down projection", act, w[m + "down_proj.weight"]);
    add_gemv("down projection on the GEMV, split rows", act, w[m + "down_proj.weight"], kernels::GemvLayout::SplitRows);
    add_gemv("down projection on the GEMV, whole rows per warp", act, w[m + "down_proj.weight"],
             kernels::GemvLayout::WholeRows);
  } else {
    const auto& gate = w[m + "gate.weight"];
    auto flat = torch::randn({1, H}, opt);
    // The routing in the router projection's launch where the model runs it so (Qwen3Model::gemv_epilogues).
    const auto route_count = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(dev));
    const bool route_fusable = ops::gemv_preferred(gate) &&
                               ops::gemv_moe_route_supported(flat, gate, c.num_experts_per_tok, route_count);
    const bool route_fused = route_fusable && model.gemv_epilogues().moe_routing;
    if (route_fusable) {
      const auto ws = clones(gate, copies_for(bytes_of(gate), l2, reps));
      size_t i = 0;
      add(route_fused ? "MoE" : "(compare)", "router logits + routing (one launch)", bytes_of(gate) + (gate.size(0) + gate.size(1)) * e,
          [&, ws] { ops::linear_decode_moe_route(flat, ws[i++ % ws.size()], c.num_experts_per_tok, c.norm_topk_prob, route_count); });
    }
    add_linear(route_fused ? "(compare)" : "MoE", "router logits", flat, gate);
    auto logits = torch::randn({1, c.num_experts}, opt);
    add(route_fused ? "(compare)" : "MoE", "routing (softmax, top-k)", c.num_experts * e,
        [&] { ops::moe_route(logits, c.num_experts_per_tok, c.norm_topk_prob); });
    // Each call its own random experts (the experts' weights are read once per token, not from L2).
    std::vector<std::pair<torch::Tensor, torch::Tensor>> routes;
    for (int r = 0; r < reps; ++r)
      routes.push_back(ops::moe_route(torch::randn({1, c.num_experts}, opt), c.num_experts_per_tok, c.norm_topk_prob));
    const auto& gu = w[m + "experts.gate_up_proj"];
    const auto& dn = w[m + "experts.down_proj"];
    const int64_t expert_bytes = (bytes_of(gu) + bytes_of(dn)) / c.num_experts;
    size_t i = 0;
    // The step's own launch shape (the model's: --moe-launch-shape) as the op; the others beside it as comparisons.
    const kernels::MoeDecodeLaunchShape in_step = model.moe_launch_shape();
    // Counts for one_launch (and the epilogue), as the model's.
    const auto counts = torch::zeros({3}, torch::TensorOptions(torch::kInt32).device(dev));
    const std::string experts_name =
        "experts (" + std::to_string(c.num_experts_per_tok) + " of " + std::to_string(c.num_experts) + ")";
    add(moe_norm_fused ? "(compare)" : "MoE", experts_name, c.num_experts_per_tok * expert_bytes, [&] {
      const auto& [ids, rw] = routes[i++ % routes.size()];
      ops::moe_decode(flat, ids, rw, gu, dn, in_step, counts);
    });
    // The residual add + input RMSNorm of the next layer in the down pass's launch (its last block); with the passes
    // in one launch and in two, the step's first.
    const auto residual = torch::randn({1, H}, opt);
    auto other = in_step;
    other.one_launch = !in_step.one_launch;
    const bool other_valid = !*kernels::check_moe_decode_launch_shape(other);
    for (const bool is_step : {true, false}) {
      if (!is_step && !other_valid) continue;
      const auto shape = is_step ? in_step : other;
      const std::string passes = shape.one_launch ? "passes in one launch" : "passes in two launches";
      add(moe_norm_fused && is_step ? "MoE" : "(compare)",
          "experts + residual add + next input RMSNorm, " + passes, c.num_experts_per_tok * expert_bytes + 5 * H * e,
          [&, residual, shape] {
            const auto& [ids, rw] = routes[i++ % routes.size()];
            ops::moe_decode_add_rms_norm(flat, ids, rw, gu, dn, residual, w[pre + "input_layernorm.weight"], eps,
                                         counts, shape);
          });
      if (!is_step)
        add("(compare)", experts_name + ", " + passes, c.num_experts_per_tok * expert_bytes, [&, shape] {
          const auto& [ids, rw] = routes[i++ % routes.size()];
          ops::moe_decode(flat, ids, rw, gu, dn, shape, counts);
        });
    }
    // The other launch shapes of the two passes (the same result bit for bit; moe_decode_gpu_test).
    for (const int rows : {1, 2, 4})
      for (const int warps : {8, 4})
        for (const bool ahead : {false, true}) {
          const kernels::MoeDecodeLaunchShape shape{rows, warps, ahead, false};
          if (rows == in_step.gate_up_rows_per_warp && warps == in_step.down_warps_per_block &&
              ahead == in_step.down_loads_ahead && !in_step.one_launch)
            continue;
          add("(compare)",
              "experts, " + std::to_string(rows) + " gate/up rows per warp, down " + std::to_string(warps) +
                  " warps per block" + (ahead ? ", loads ahead" : ""),
              c.num_experts_per_tok * expert_bytes, [&, shape] {
                const auto& [ids, rw] = routes[i++ % routes.size()];
                ops::moe_decode(flat, ids, rw, gu, dn, shape);
              });
        }
  }
  // Once per token.
  const auto& head = c.tie_word_embeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
  add("head", "residual add + final RMSNorm", 5 * H * e, [&] { ops::add_rms_norm(x, d, w["model.norm.weight"], eps); });
  add("head", "LM head, GEMV with float32 logits", bytes_of(head) + H * e + c.vocab_size * 4,
      [&] { ops::linear_decode_logits(h, head); });
  add("(compare)", "LM head by cuBLAS, then the cast to float32", bytes_of(head) + H * e + c.vocab_size * 4,
      [&] { at::linear(h, head).to(torch::kFloat32); });
  // (The head's 311-1245 MB exceed L2 already.)
  return out;
}

}  // namespace rtp::bench
