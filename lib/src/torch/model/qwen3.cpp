#include "rtp/model/qwen3.h"

#include <ATen/Context.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <tuple>
#include <unordered_map>

#include "rtp/core/error.h"
#include "rtp/model/parameter_layout.h"
#include "rtp/model/rope.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/ops/moe_decode.h"
#include "rtp/ops/moe_grouped.h"
#include "rtp/ops/moe_router.h"
#include "rtp/ops/rms_norm.h"
#include "rtp/ops/swiglu.h"
#include "rtp/torch/upload.h"

namespace rtp::model {

namespace F = torch::nn::functional;

class Qwen3ModelImpl {
 public:
  Qwen3ModelImpl(const ModelConfig& c, torch::Device device, torch::ScalarType dtype)
      : cfg(c), root(std::make_shared<torch::nn::Module>("Qwen3Model")) {
    const auto options = torch::TensorOptions(dtype).device(device);
    for (const auto& spec : parameter_layout(cfg)) {
      auto t = torch::empty(spec.shape, options);
      if (spec.is_norm) t.fill_(1.0);
      else t.zero_();
      // torch module names cannot hold dots; HF names stay the public key.
      std::string module_name = spec.name;
      std::replace(module_name.begin(), module_name.end(), '.', '_');
      t = root->register_parameter(module_name, t);
      order.push_back(spec.name);
      by_name.emplace(spec.name, t);
    }
    fuse_projections();
  }

  // Parameters held one after the other along dim 0 of `joined`. `parts` are the parameters themselves (the handles
  // the module and the name map hold), so a later set_data on any of them shows in shares_rows.
  struct SharedRows {
    torch::Tensor joined;
    std::vector<torch::Tensor> parts;
  };

  // Each layer's q/k/v projections (and biases) are rows of one tensor, and a dense MLP's gate and up projections
  // too: the parameters stay separate tensors under their Hugging Face names (loading, saving, training see no
  // difference) but share storage, so that inference on a GPU runs one GEMM where it ran three, and one where it
  // ran two (in a decode step each GEMM is a kernel launch of a few microseconds over a few megabytes). Called
  // again after to(), which gives every parameter storage of its own.
  void fuse_projections() {
    torch::NoGradGuard no_grad;
    // One count per q, k and v head (the q/k norm epilogue; v with its token store), the first also the other
    // epilogues'.
    gemv_done = torch::zeros({cfg.num_attention_heads + 2 * cfg.num_key_value_heads},
                             torch::TensorOptions(torch::kInt32).device(device()));
    const int64_t L = cfg.num_hidden_layers;
    qkv_weight.assign(L, SharedRows());
    qkv_bias.assign(L, SharedRows());
    gate_up_weight.assign(L, SharedRows());
    for (int64_t i = 0; i < L; ++i) {
      const std::string a = "model.layers." + std::to_string(i) + ".self_attn.", m = "model.layers." + std::to_string(i) + ".mlp.";
      qkv_weight[i] = share_rows({a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"});
      if (cfg.attention_bias) qkv_bias[i] = share_rows({a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"});
      if (!cfg.layer_is_moe(i)) gate_up_weight[i] = share_rows({m + "gate_proj.weight", m + "up_proj.weight"});
    }
  }

  // One tensor holding the parameters `names` one after the other, each parameter then a view of it (set_data keeps
  // the parameter's identity: the module, the name map and an optimizer still hold the same tensor).
  SharedRows share_rows(const std::vector<std::string>& names) {
    SharedRows r;
    for (const auto& n : names) r.parts.push_back(p(n));
    r.joined = torch::cat(r.parts, 0);
    int64_t row = 0;
    for (auto& t : r.parts) {
      auto view = r.joined.narrow(0, row, t.size(0));
      row += t.size(0);
      t.set_data(view);
    }
    return r;
  }

  // Whether the parameters still live in `joined` (to() or a caller's set_data may have moved them) and inference
  // may use it: with gradients wanted the separate parameters must be used, so that each receives its own.
  static bool shares_rows(const SharedRows& r) {
    if (!r.joined.defined() || !r.joined.is_cuda()) return false;  // the CPU keeps Hugging Face's exact op sequence
    const bool grad = torch::GradMode::is_enabled();
    const auto* base = static_cast<const char*>(r.joined.data_ptr());
    int64_t offset = 0;
    for (const auto& t : r.parts) {
      if (grad && t.requires_grad()) return false;
      if (t.data_ptr() != base + offset * static_cast<int64_t>(r.joined.element_size()) ||
          t.dtype() != r.joined.dtype() || !t.is_contiguous())
        return false;
      offset += t.numel();
    }
    return offset == r.joined.numel();
  }

  const torch::Tensor& p(const std::string& name) const {
    auto it = by_name.find(name);
    RTP_CHECK(it != by_name.end(), "internal: model has no parameter '", name, "'");
    return it->second;
  }

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
    // On a GPU one fused kernel (the eager version is eight launches, four times per layer).
    if (ops::fused_rms_norm_supported(x, weight)) return ops::rms_norm(x, weight, cfg.rms_norm_eps);
    // As HF: normalise in fp32, cast back, then scale.
    auto xf = x.to(torch::kFloat32);
    auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, true) + cfg.rms_norm_eps);
    return weight * normed.to(x.dtype());
  }

  // The norm of x.base + x.pending, leaving the sum in x.base: on a GPU one kernel for the add and the norm.
  torch::Tensor add_norm(ResidualStream& x, const torch::Tensor& weight) const {
    if (auto& e = x.pending_experts; e.x.defined()) {
      if (ops::moe_decode_add_rms_norm_supported(e.x, e.weight, e.gate_up, e.down, x.base, weight, gemv_done)) {
        torch::Tensor normed;
        std::tie(x.base, normed) = ops::moe_decode_add_rms_norm(e.x, e.expert, e.weight, e.gate_up, e.down, x.base,
                                                                weight, cfg.rms_norm_eps, gemv_done, moe_shape);
        e = {};
        ++epilogue_launches.moe_add_norm;
        return normed;
      }
      settle(x);
    }
    if (x.pending_w.defined()) {
      if (ops::gemv_add_rms_norm_supported(x.pending_x, x.pending_w, x.base, weight, gemv_done)) {
        torch::Tensor normed;
        std::tie(x.base, normed) =
            ops::linear_decode_add_rms_norm(x.pending_x, x.pending_w, x.base, weight, cfg.rms_norm_eps, gemv_done);
        x.pending_x = x.pending_w = torch::Tensor();
        ++epilogue_launches.add_norm;
        return normed;
      }
      settle(x);
    }
    if (x.pending.defined()) {
      if (ops::fused_rms_norm_supported(x.base, weight) && ops::fused_rms_norm_supported(x.pending, weight) &&
          x.base.sizes() == x.pending.sizes()) {
        auto [sum, normed] = ops::add_rms_norm(x.base, x.pending, weight, cfg.rms_norm_eps);
        x.base = std::move(sum);
        x.pending = torch::Tensor();
        return normed;
      }
      x.base = x.base + x.pending;
      x.pending = torch::Tensor();
    }
    return rms_norm(x.base, weight);
  }

  // The counts of the MoE kernels' one launch (MoeDecodeLaunchShape::one_launch): the epilogues' where there are three
  // of them, else none (moe_decode makes its own).
  torch::Tensor moe_counts() const { return gemv_done.defined() && gemv_done.numel() >= 3 ? gemv_done : torch::Tensor(); }

  // A deferred projection or MoE block computed into x.pending.
  void settle(ResidualStream& x) const {
    if (!x.pending_w.defined() && !x.pending_experts.x.defined()) return;
    RTP_CHECK(!x.pending.defined(), "internal: a residual stream with both a pending add and deferred work");
    if (auto& e = x.pending_experts; e.x.defined()) {
      x.pending =
          ops::moe_decode(e.x, e.expert, e.weight, e.gate_up, e.down, moe_shape, moe_counts()).reshape(x.base.sizes());
      e = {};
      return;
    }
    x.pending = ops::linear_decode(x.pending_x, x.pending_w, gemv_layout);
    x.pending_x = x.pending_w = torch::Tensor();
  }

  // x.pending = input W^T: deferred where the GEMV will run it (a decode step on a GPU), so the norm after it can join
  // its launch (add_norm); computed now elsewhere.
  void project_into(ResidualStream& x, const torch::Tensor& input, const torch::Tensor& weight) const {
    const int64_t max_m = epilogues.add_norm_max_m > 0 ? epilogues.add_norm_max_m : ops::kFusedAddNormMaxM;
    if (epilogues.add_norm && weight.size(0) <= max_m &&
        ops::gemv_preferred(weight, gemv_max_ratio) && ops::gemv_supported(input, weight)) {
      x.pending_x = input, x.pending_w = weight;
    } else {
      x.pending = ops::project(input, weight, gemv_max_ratio, gemv_layout);
    }
  }

  // Without bias, a decode step's few tokens go through the GEMV kernel on a GPU where it beats cuBLAS
  // (ops/linear_decode.h).
  torch::Tensor linear(const torch::Tensor& x, const std::string& base, bool bias) const {
    return bias ? at::linear(x, p(base + ".weight"), p(base + ".bias"))
                : ops::project(x, p(base + ".weight"), gemv_max_ratio, gemv_layout);
  }

  // The dense MLP up to its down projection: SwiGLU of the gate and up projections.
  torch::Tensor dense_mlp_activation(int64_t i, const torch::Tensor& x, const std::string& pre) const {
    torch::Tensor gate, up;
    if (shares_rows(gate_up_weight[i])) {
      const auto& joined = gate_up_weight[i].joined;
      // A decode step on a GPU: SwiGLU in the projection's launch.
      if (epilogues.swiglu && ops::gemv_preferred(joined, gemv_max_ratio) && ops::gemv_swiglu_supported(x, joined)) {
        ++epilogue_launches.swiglu;
        return ops::linear_decode_swiglu(x, joined);
      }
      auto gu = ops::project(x, joined, gemv_max_ratio, gemv_layout);
      const int64_t I = cfg.intermediate_size;
      gate = gu.narrow(-1, 0, I), up = gu.narrow(-1, I, I);
    } else {
      gate = ops::project(x, p(pre + "gate_proj.weight"), gemv_max_ratio, gemv_layout);
      up = ops::project(x, p(pre + "up_proj.weight"), gemv_max_ratio, gemv_layout);
    }
    return ops::swiglu(gate, up);
  }

  // The MoE block of input x into res.pending, or deferred (res.pending_experts) where the next add + RMSNorm can run
  // in its down pass's launch.
  void moe_into(ResidualStream& res, const torch::Tensor& x, const std::string& pre) const {
    const auto shape = x.sizes().vec();
    auto flat = x.reshape({-1, cfg.hidden_size});
    const auto& router = p(pre + "gate.weight");
    torch::Tensor top_i, top_w;
    if (epilogues.moe_routing && ops::gemv_preferred(router, gemv_max_ratio) &&
        ops::gemv_moe_route_supported(flat, router, cfg.num_experts_per_tok, gemv_done)) {
      // A decode step on a GPU: the routing in the router projection's launch, by its last block.
      std::tie(std::ignore, top_i, top_w) =
          ops::linear_decode_moe_route(flat, router, cfg.num_experts_per_tok, cfg.norm_topk_prob, gemv_done, gemv_layout);
      ++epilogue_launches.moe_routing;
    } else {
      auto router_logits = ops::project(flat, router, gemv_max_ratio, gemv_layout);
      std::tie(top_i, top_w) = ops::moe_route(router_logits, cfg.num_experts_per_tok, cfg.norm_topk_prob);
    }

    const auto& gate_up = p(pre + "experts.gate_up_proj");  // [E, 2I, H]
    const auto& down = p(pre + "experts.down_proj");        // [E, H, I]
    // add_norm runs it, or settle where the fused launch does not take the operands (a gradient wanted: then
    // moe_decode's differentiable fallback).
    if (epilogues.moe_add_norm && moe_on_device(flat.size(0)))
      res.pending_experts = {flat, top_i, top_w, gate_up, down};
    else if (moe_on_device(flat.size(0)))
      res.pending = ops::moe_decode(flat, top_i, top_w, gate_up, down, moe_shape, moe_counts()).reshape(shape);
    else
      res.pending = ops::moe_grouped(flat, top_i, top_w, gate_up, down).reshape(shape);
  }

  // A few tokens on a GPU: the experts are read by id on the device (no expert counts on the host).
  bool moe_on_device(int64_t tokens) const {
    return moe_by_id && device().is_cuda() && tokens <= ops::kMoeDecodeMaxTokens &&
           ops::moe_decode_supported(device(), dtype());
  }
  bool moe_by_id = true;
  kernels::MoeDecodeLaunchShape moe_shape;
  Qwen3Model::GemvEpilogues epilogues;  // which work of a decode step joins a GEMV launch (gemv.h's epilogues)
  mutable Qwen3Model::GemvEpilogueLaunches epilogue_launches;
  int64_t gemv_max_ratio = ops::kDecodeGemvMaxRatio;  // the decode projections' GEMV where m <= ratio * k
  kernels::GemvLayout gemv_layout = kernels::GemvLayout::Auto;  // and its warp layout
  bool lm_head_gemv = true;  // the decode step's LM head by the GEMV (float32 logits in the launch)
  ChunkAttention chunk_attention = ChunkAttention::SplitCudnn;  // the dense forward's prompt chunks after the first

  // RoPE's inverse frequencies on the model's device, uploaded once: a host tensor's upload per forward waited for the
  // device's queue to drain.
  const torch::Tensor& inverse_frequencies() {
    if (!rope_inv_freq.defined() || rope_inv_freq.device() != device()) {
      auto [inv_freq, factor] = rope_inverse_frequencies(cfg);
      rope_inv_freq = inv_freq.to(device());
      rope_attention_factor = factor;
    }
    return rope_inv_freq;
  }
  torch::Tensor rope_inv_freq;
  double rope_attention_factor = 1.0;

  torch::Tensor forward(const torch::Tensor& ids, const ForwardOptions& o) {
    RTP_CHECK(ids.dim() == 2 && ids.scalar_type() == torch::kInt64, "input_ids must be int64 [B, T], found ",
              ids.sizes(), " ", ids.scalar_type());
    // Host ids go up without a wait for the device's queue (an ordinary upload waited once per prompt chunk).
    auto ids_dev = upload_without_wait(ids, device());
    const int64_t T = ids.size(1);
    if (T > 0) {
      // Checked where the ids were given: host ids on the host (the device's queue keeps running), device ids by one
      // copy of their range (a prompt chunk's forward waited for the queue to drain twice).
      const auto [mn, mx] = torch::aminmax(ids.is_cpu() ? ids : ids_dev);
      const auto range = torch::stack({mn, mx}).to(torch::kCPU);
      const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
      RTP_CHECK(lo >= 0 && hi < cfg.vocab_size, "input_ids must lie in [0, ", cfg.vocab_size, "), found values in [", lo,
                ", ", hi, "]");
    }
    DenseAttention dense(chunk_attention);
    AttentionSeam* attention = o.attention ? o.attention : &dense;
    const int64_t first_position = o.cache ? o.cache->length() : o.position_offset;
    RTP_CHECK(!o.cache || o.cache->num_layers() == cfg.num_hidden_layers, "KV cache has ", o.cache ? o.cache->num_layers() : 0,
              " layers, the model ", cfg.num_hidden_layers);
    const auto& inv_freq = inverse_frequencies();  // sets rope_attention_factor on its first call
    auto rope = rope_tables_at(
        torch::arange(first_position, first_position + T, torch::TensorOptions(torch::kInt64).device(device())),
        inv_freq, rope_attention_factor);
    ResidualStream x{F::embedding(ids_dev, p("model.embed_tokens.weight")), {}};
    const int64_t last = o.stop_after_layer >= 0 ? std::min(o.stop_after_layer, cfg.num_hidden_layers - 1)
                                                 : cfg.num_hidden_layers - 1;
    for (int64_t i = 0; i <= last; ++i) {
      // Named ranges in a profiler trace (rtpurbo-bench-decode --trace-prefill); nothing when no profiler runs.
      LayerAttentionInputs in;
      {
        RECORD_FUNCTION("rtp::layer::qkv", std::vector<c10::IValue>());
        in = attention_inputs(i, x, rope);
        if (o.cache) std::tie(in.k, in.v) = o.cache->append(i, in.k, in.v);
      }
      if (o.observer) o.observer(in);
      torch::Tensor attended;
      {
        RECORD_FUNCTION("rtp::layer::attend", std::vector<c10::IValue>());
        attended = attention->attend(in);
      }
      RECORD_FUNCTION("rtp::layer::mlp", std::vector<c10::IValue>());
      x = finish_layer(i, std::move(x), attended);
    }
    if (o.cache) o.cache->advance(T);
    if (o.stop_after_layer >= 0 && last < cfg.num_hidden_layers - 1) return x.resolved();
    if (o.return_hidden) return add_norm(x, p("model.norm.weight"));
    if (o.last_position_logits && T > 1) {
      const auto last_row = [T](torch::Tensor& t) {
        if (t.defined()) t = t.narrow(1, T - 1, 1);
      };
      if (x.pending_experts.x.defined()) settle(x);  // per flat token: run it before the rows are cut
      last_row(x.base), last_row(x.pending), last_row(x.pending_x);
    }
    return lm_logits(std::move(x));
  }

  LayerAttentionInputs attention_inputs(int64_t i, ResidualStream& x, const RopeTables& rope,
                                        const TokenSlot& slot = {}) const {
    const int64_t B = x.base.size(0), T = x.base.size(1);
    const int64_t Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads, D = cfg.head_dim;
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    auto h = add_norm(x, p(pre + "input_layernorm.weight"));
    torch::Tensor q, k, v;
    const std::string a = pre + "self_attn.";
    const auto& qw = p(pre + "self_attn.q_norm.weight");
    const auto& kw = p(pre + "self_attn.k_norm.weight");
    LayerAttentionInputs in;
    in.layer = i;
    in.scale = 1.0 / std::sqrt(static_cast<double>(D));
    // A decode step on a GPU: the q/k norms and RoPE in the projection's launch, by each head's last block; with a
    // slot, the token's k and v into the cache there too (where the store is supported, so is the launch without it).
    const auto fusable = [&](const ops::QkvTokenStore& store) {
      return ops::gemv_qk_norm_rope_supported(h, qkv_weight[i].joined, qw, kw, rope.cos, rope.sin, Hq, Hkv, gemv_done,
                                              store);
    };
    ops::QkvTokenStore store;
    if (epilogues.kv_store && slot.defined()) store = {slot.k_cache, slot.v_cache, slot.position};
    if (epilogues.qk_norm_rope && !cfg.attention_bias && shares_rows(qkv_weight[i]) &&
        ops::gemv_preferred(qkv_weight[i].joined, gemv_max_ratio) &&
        ((store.requested() && fusable(store)) || (store = {}, fusable(store)))) {
      auto r = ops::linear_decode_qk_norm_rope(h, qkv_weight[i].joined, qw, kw, rope.cos, rope.sin, Hq, Hkv,
                                               cfg.rms_norm_eps, gemv_done, gemv_layout, store);
      ++epilogue_launches.qk_norm_rope;
      if (store.requested()) in.token_stored = true, ++epilogue_launches.kv_store;
      in.q_pre_rope = r.q_normed.transpose(1, 2), in.q = r.q_roped.transpose(1, 2);
      in.k_pre_rope = r.k_normed.transpose(1, 2), in.k = r.k_roped.transpose(1, 2);
      in.v = r.qkv.narrow(-1, (Hq + Hkv) * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
      return in;
    }
    if (shares_rows(qkv_weight[i]) && (!cfg.attention_bias || shares_rows(qkv_bias[i]))) {
      // One GEMM; q, k and v are views of its output (the fused norm kernels read q and k in place).
      auto qkv = cfg.attention_bias ? at::linear(h, qkv_weight[i].joined, qkv_bias[i].joined)
                                    : ops::project(h, qkv_weight[i].joined, gemv_max_ratio, gemv_layout);
      q = qkv.narrow(-1, 0, Hq * D).view({B, T, Hq, D});
      k = qkv.narrow(-1, Hq * D, Hkv * D).view({B, T, Hkv, D});
      v = qkv.narrow(-1, (Hq + Hkv) * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
    } else {
      q = linear(h, a + "q_proj", cfg.attention_bias).view({B, T, Hq, D});
      k = linear(h, a + "k_proj", cfg.attention_bias).view({B, T, Hkv, D});
      v = linear(h, a + "v_proj", cfg.attention_bias).view({B, T, Hkv, D}).transpose(1, 2);
    }
    if (ops::fused_rms_norm_rope_supported(q, qw) && ops::fused_rms_norm_rope_supported(k, kw)) {
      // On a GPU the norms and RoPE of q and k in one kernel (fourteen launches each eagerly).
      auto [qn, qr, kn, kr] = ops::rms_norm_rope_qk(q, qw, k, kw, rope.cos, rope.sin, cfg.rms_norm_eps);
      in.q_pre_rope = qn.transpose(1, 2), in.q = qr.transpose(1, 2);
      in.k_pre_rope = kn.transpose(1, 2), in.k = kr.transpose(1, 2);
    } else {
      q = rms_norm(q, qw).transpose(1, 2);
      k = rms_norm(k, kw).transpose(1, 2);
      in.q_pre_rope = q;
      in.k_pre_rope = k;
      in.q = apply_rope(q, rope);
      in.k = apply_rope(k, rope);
    }
    in.v = v;
    return in;
  }

  ResidualStream finish_layer(int64_t i, ResidualStream x, const torch::Tensor& attention) const {
    RTP_CHECK(!x.pending.defined() && !x.pending_w.defined() && !x.pending_experts.x.defined(),
              "internal: finish_layer on a residual stream with a pending add");
    const int64_t B = x.base.size(0), T = x.base.size(1);
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    auto a = attention.transpose(1, 2).reshape({B, T, cfg.num_attention_heads * cfg.head_dim});
    if (cfg.attention_bias) x.pending = linear(a, pre + "self_attn.o_proj", true);
    else project_into(x, a, p(pre + "self_attn.o_proj.weight"));
    auto h = add_norm(x, p(pre + "post_attention_layernorm.weight"));
    if (cfg.layer_is_moe(i)) moe_into(x, h, pre + "mlp.");
    else project_into(x, dense_mlp_activation(i, h, pre + "mlp."), p(pre + "mlp.down_proj.weight"));
    return x;
  }

  torch::Tensor lm_logits(ResidualStream x) const {
    const auto& head = cfg.tie_word_embeddings ? p("model.embed_tokens.weight") : p("lm_head.weight");
    const auto h = add_norm(x, p("model.norm.weight"));
    return lm_head_gemv ? ops::linear_decode_logits(h, head, gemv_layout) : at::linear(h, head).to(torch::kFloat32);
  }

  torch::Device device() const { return p("model.embed_tokens.weight").device(); }
  torch::ScalarType dtype() const { return p("model.embed_tokens.weight").scalar_type(); }

  ModelConfig cfg;
  std::shared_ptr<torch::nn::Module> root;
  std::vector<std::string> order;
  std::unordered_map<std::string, torch::Tensor> by_name;
  // Per layer (fuse_projections): q/k/v weights and biases, a dense MLP's gate and up weights, as one tensor each.
  std::vector<SharedRows> qkv_weight, qkv_bias, gate_up_weight;
  // The count of the GEMV epilogue's blocks (ops::linear_decode_add_rms_norm), 0 between launches.
  torch::Tensor gemv_done;
};

Qwen3Model::Qwen3Model(const ModelConfig& config, torch::Device device, torch::ScalarType dtype)
    : impl_(std::make_unique<Qwen3ModelImpl>(config, device, dtype)) {}
Qwen3Model::~Qwen3Model() = default;
Qwen3Model::Qwen3Model(Qwen3Model&&) noexcept = default;
Qwen3Model& Qwen3Model::operator=(Qwen3Model&&) noexcept = default;

const ModelConfig& Qwen3Model::config() const { return impl_->cfg; }
torch::nn::Module& Qwen3Model::module() { return *impl_->root; }

std::vector<std::pair<std::string, torch::Tensor>> Qwen3Model::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(impl_->order.size());
  for (const auto& n : impl_->order) out.emplace_back(n, impl_->by_name.at(n));
  return out;
}

void Qwen3Model::to(torch::Device device, torch::ScalarType dtype) {
  // Module::to swaps each parameter's data in place (set_data), so the name map keeps pointing at them; it gives each
  // its own storage, so the fused projections are built again.
  impl_->root->to(device, dtype);
  impl_->fuse_projections();
}

torch::Device Qwen3Model::device() const { return impl_->device(); }

torch::Tensor Qwen3Model::embed(const torch::Tensor& ids_on_device) const {
  return F::embedding(ids_on_device, impl_->p("model.embed_tokens.weight"));
}

torch::Tensor ResidualStream::resolved() const {
  if (const auto& e = pending_experts; e.x.defined())
    return base + ops::moe_decode(e.x, e.expert, e.weight, e.gate_up, e.down).reshape(base.sizes());
  if (pending_w.defined()) return base + ops::linear_decode(pending_x, pending_w);
  return pending.defined() ? base + pending : base;
}

LayerAttentionInputs Qwen3Model::attention_inputs(int64_t layer, ResidualStream& x, const RopeTables& rope,
                                                  const TokenSlot& slot) const {
  return impl_->attention_inputs(layer, x, rope, slot);
}
ResidualStream Qwen3Model::finish_layer(int64_t layer, ResidualStream x, const torch::Tensor& attention) const {
  return impl_->finish_layer(layer, std::move(x), attention);
}
torch::Tensor Qwen3Model::lm_logits(ResidualStream x) const { return impl_->lm_logits(std::move(x)); }

void Qwen3Model::set_moe_experts_by_id(bool on) { impl_->moe_by_id = on; }
void Qwen3Model::set_moe_launch_shape(const kernels::MoeDecodeLaunchShape& shape) { impl_->moe_shape = shape; }
const kernels::MoeDecodeLaunchShape& Qwen3Model::moe_launch_shape() const { return impl_->moe_shape; }
void Qwen3Model::set_gemv_layout(kernels::GemvLayout layout) { impl_->gemv_layout = layout; }
void Qwen3Model::set_lm_head_gemv(bool on) { impl_->lm_head_gemv = on; }

void Qwen3Model::set_chunk_attention(ChunkAttention chunk) { impl_->chunk_attention = chunk; }
void Qwen3Model::set_gemv_epilogues(const GemvEpilogues& on) { impl_->epilogues = on; }
const Qwen3Model::GemvEpilogues& Qwen3Model::gemv_epilogues() const { return impl_->epilogues; }
Qwen3Model::GemvEpilogueLaunches Qwen3Model::gemv_epilogue_launches() const { return impl_->epilogue_launches; }

void Qwen3Model::set_gemv_max_ratio(int64_t ratio) {
  RTP_CHECK(ratio >= 1, "set_gemv_max_ratio: the ratio must be at least 1, found ", ratio);
  impl_->gemv_max_ratio = ratio;
}

bool Qwen3Model::forward_reads_no_host_values(int64_t tokens) const {
  return !impl_->cfg.is_moe() || impl_->moe_on_device(tokens);
}
torch::ScalarType Qwen3Model::dtype() const { return impl_->dtype(); }

torch::Tensor Qwen3Model::forward(const torch::Tensor& input_ids, const ForwardOptions& options) {
  return impl_->forward(input_ids, options);
}

void Qwen3Model::init_random(uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  const bool on_host = impl_->device().is_cpu();
  at::Generator gen;
  if (on_host) {
    gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  } else {
    // A private copy of the device's generator type, so that the process-wide default generator is untouched.
    gen = at::globalContext().defaultGenerator(impl_->device()).clone();
    gen.set_current_seed(seed);
  }
  for (const auto& spec : parameter_layout(impl_->cfg)) {
    auto& t = impl_->by_name.at(spec.name);
    if (spec.is_norm) {
      t.fill_(1.0);
    } else if (spec.is_bias) {
      t.zero_();
    } else if (on_host) {
      auto r = at::normal(0.0, std, spec.shape, gen, torch::TensorOptions(torch::kFloat32));
      t.copy_(r);
    } else {
      t.normal_(0.0, std, gen);
    }
  }
}

}  // namespace rtp::model
