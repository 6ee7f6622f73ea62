#include "rtp/sparse/sparse_attention.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/ops/sparse_attention.h"

namespace rtp::sparse {

ops::SparseConfig to_ops_config(const SparseSettings& s) {
  ops::SparseConfig c;
  c.sink = s.sink;
  c.window = s.window;
  c.block_size = static_cast<int>(s.block_size);
  c.local_blocks = static_cast<int>(s.local_blocks);
  c.top_p = static_cast<float>(s.top_p);
  c.query_sub_blocks = static_cast<int>(s.query_sub_blocks);
  c.sub_block_aggregate = ops::parse_block_aggregate(s.sub_block_aggregate);
  return c;
}

namespace {

// [T, T] bool: j <= i and (j < sink or j > i - window).
torch::Tensor streaming_mask(int64_t T, int64_t sink, int64_t window, torch::Device device) {
  auto i = torch::arange(T, torch::TensorOptions(torch::kInt64).device(device)).unsqueeze(1);
  auto j = torch::arange(T, torch::TensorOptions(torch::kInt64).device(device)).unsqueeze(0);
  return (j <= i) & ((j < sink) | (j > i - window));
}

torch::Tensor causal_mask(int64_t T, torch::Device device) {
  return torch::ones({T, T}, torch::TensorOptions(torch::kBool).device(device)).tril();
}

// Pairs (i, j) of streaming_mask: per query the last `window` keys, plus the sinks older than the window.
double streaming_pairs(int64_t T, int64_t sink, int64_t window) {
  double n = 0;
  for (int64_t i = 0; i < T; ++i)
    n += static_cast<double>(std::min(i + 1, window) + std::min(sink, std::max<int64_t>(0, i + 1 - window)));
  return n;
}

// Causal pairs of retrieval slot r's block lists: a full rows x cols rectangle below the diagonal block, the
// lower triangle inside it (the last block may be short).
double block_list_pairs(const ops::BlockLists& lists, int64_t r, int64_t T, int64_t B) {
  const auto counts = lists.counts.to(torch::kCPU).contiguous();
  const auto indices = lists.indices.to(torch::kCPU).contiguous();
  const auto cnt = counts.accessor<int32_t, 2>();
  const auto idx = indices.accessor<int32_t, 3>();
  auto extent = [&](int64_t b) { return std::min((b + 1) * B, T) - b * B; };
  double n = 0;
  for (int64_t b = 0; b < counts.size(1); ++b) {
    const double rows = static_cast<double>(extent(b));
    for (int32_t c = 0; c < cnt[r][b]; ++c) {
      const int64_t kb = idx[r][b][c];
      if (kb < b) n += rows * static_cast<double>(extent(kb));
      else if (kb == b) n += rows * (rows + 1) / 2;
    }
  }
  return n;
}

}  // namespace

std::vector<double> SparseAttention::kv_head_pairs(int64_t layer, int64_t T, const ops::BlockLists* lists) const {
  const double causal = static_cast<double>(T) * static_cast<double>(T + 1) / 2;
  const bool dense_prompt = T < settings_.dense_below;
  const double stream = dense_prompt ? causal : streaming_pairs(T, settings_.sink, settings_.window);
  std::vector<double> pairs(static_cast<size_t>(heads_.num_kv_heads), stream);
  const auto ret = heads_.retrieval_heads(layer);
  for (size_t r = 0; r < ret.size(); ++r) {
    const bool listed = !dense_prompt && indexer_ != nullptr;
    RTP_CHECK(!listed || lists != nullptr, "kv_head_pairs: layer ", layer, " needs the retrieval heads' block lists");
    pairs[static_cast<size_t>(ret[r])] =
        listed ? block_list_pairs(*lists, static_cast<int64_t>(r), T, settings_.block_size) : causal;
  }
  return pairs;
}

ops::BlockLists SparseAttention::reference_lists(const model::LayerAttentionInputs& in) const {
  const auto& qsrc = settings_.post_rope_indexer ? in.q : in.q_pre_rope;
  const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
  torch::NoGradGuard no_grad;
  auto iq = indexer_->index_queries(in.layer, qsrc)[0].to(torch::kFloat32).contiguous();  // [n, G, T, dim]
  auto ik = indexer_->index_keys(in.layer, ksrc)[0].to(torch::kFloat32).contiguous();     // [n, T, dim]
  return ops::select_blocks(iq.cpu(), ik.cpu(), to_ops_config(settings_));
}

SparseAttention::SparseAttention(HeadMap heads, SparseSettings settings, const Indexer* indexer)
    : heads_(std::move(heads)), settings_(settings), indexer_(indexer) {
  heads_.validate("sparse attention");
}

torch::Tensor SparseAttention::layer_mask(const model::LayerAttentionInputs& in) const {
  const int64_t layer = in.layer, Hq = in.q.size(1), Hkv = in.k.size(1), T = in.q.size(2);
  const int64_t G = Hq / Hkv;
  RTP_CHECK(in.q.size(0) == 1, "layer_mask works on one sequence at a time, found batch ", in.q.size(0));
  RTP_CHECK(Hkv == heads_.num_kv_heads && layer < heads_.num_layers, "head map (", heads_.num_layers, " layers x ",
            heads_.num_kv_heads, " KV heads) does not fit layer ", layer, " with ", Hkv, " KV heads");
  const auto dev = in.q.device();
  auto kv_masks = std::vector<torch::Tensor>(Hkv);
  auto stream = streaming_mask(T, settings_.sink, settings_.window, dev);
  auto causal = causal_mask(T, dev);
  const bool dense_prompt = T < settings_.dense_below;
  const auto ret = heads_.retrieval_heads(layer);
  for (int64_t g = 0; g < Hkv; ++g) kv_masks[g] = dense_prompt ? causal : stream;
  if (!ret.empty() && !dense_prompt) {
    if (indexer_ == nullptr) {
      for (int64_t g : ret) kv_masks[g] = causal;
    } else {
      auto lists = reference_lists(in);
      const int64_t nb = lists.counts.size(1), B = settings_.block_size;
      auto counts = lists.counts.accessor<int32_t, 2>();
      auto idx = lists.indices.accessor<int32_t, 3>();
      for (size_t r = 0; r < ret.size(); ++r) {
        auto blocks = torch::zeros({nb, nb}, torch::kBool);
        auto acc = blocks.accessor<bool, 2>();
        for (int64_t b = 0; b < nb; ++b)
          for (int32_t c = 0; c < counts[r][b]; ++c) acc[b][idx[r][b][c]] = true;
        auto token = blocks.repeat_interleave(B, 0).repeat_interleave(B, 1).narrow(0, 0, T).narrow(1, 0, T).to(dev);
        kv_masks[ret[r]] = token & causal;
      }
    }
  }
  return torch::stack(kv_masks, 0).repeat_interleave(G, 0);  // [Hq, T, T]
}

torch::Tensor SparseAttention::attend(const model::LayerAttentionInputs& in) {
  const int64_t Bsz = in.q.size(0), Hq = in.q.size(1), Hkv = in.k.size(1), T = in.q.size(2), G = Hq / Hkv;
  const int64_t layer = in.layer;
  if (stats_.head_attended.empty()) {
    stats_.head_attended.assign(heads_.num_layers, std::vector<double>(heads_.num_kv_heads, 0.0));
    stats_.head_causal.assign(heads_.num_layers, std::vector<double>(heads_.num_kv_heads, 0.0));
  }
  std::vector<torch::Tensor> outs;
  for (int64_t b = 0; b < Bsz; ++b) {
    model::LayerAttentionInputs one;
    one.layer = layer;
    one.scale = in.scale;
    one.q = in.q.narrow(0, b, 1);
    one.k = in.k.narrow(0, b, 1);
    one.v = in.v.narrow(0, b, 1);
    one.q_pre_rope = in.q_pre_rope.narrow(0, b, 1);
    one.k_pre_rope = in.k_pre_rope.narrow(0, b, 1);
    const bool kernel_ok = use_kernels && kernels::built_with_cuda() && one.q.is_cuda() &&
                           one.q.scalar_type() == torch::kBFloat16 && (one.q.size(3) == 64 || one.q.size(3) == 128) &&
                           settings_.dense_below <= T && indexer_ != nullptr && !settings_.post_rope_indexer;
    // The [Hq, T, T] mask is needed by the reference path and by recall; the kernels and the pair counts never
    // need it (at 32K tokens and 32 heads it would be 32 GB).
    torch::Tensor mask;
    if (!kernel_ok || measure_recall_) mask = layer_mask(one);  // [Hq, T, T]
    const bool listed = !heads_.retrieval_heads(layer).empty() && T >= settings_.dense_below && indexer_ != nullptr;
    ops::BlockLists lists;
    if (kernel_ok && listed) {
      auto iq = indexer_->index_queries(layer, one.q_pre_rope)[0].to(torch::kBFloat16).contiguous();
      auto ik = indexer_->index_keys(layer, one.k_pre_rope)[0].to(torch::kBFloat16).contiguous();
      lists = ops::select_blocks(iq, ik, to_ops_config(settings_));
    }
    if (collect_stats || measure_recall_) {
      const double causal_pairs = static_cast<double>(T) * (T + 1) / 2;
      std::vector<double> per_kv;
      if (mask.defined()) {
        auto per_head = mask.sum({1, 2}).to(torch::kFloat64).cpu();
        per_kv.assign(static_cast<size_t>(Hkv), 0.0);
        for (int64_t h = 0; h < Hq; ++h) per_kv[static_cast<size_t>(h / G)] += per_head[h].item<double>() / G;
      } else {
        per_kv = kv_head_pairs(layer, T, listed ? &lists : nullptr);
      }
      for (int64_t g = 0; g < Hkv; ++g) {
        stats_.head_attended[layer][g] += per_kv[static_cast<size_t>(g)] * G;
        stats_.head_causal[layer][g] += causal_pairs * G;
        stats_.attended_pairs += per_kv[static_cast<size_t>(g)] * G;
      }
      stats_.causal_pairs += causal_pairs * Hq;
      if (measure_recall_) {
        const auto ret = heads_.retrieval_heads(layer);
        torch::NoGradGuard no_grad;
        for (int64_t g : ret) {
          auto qh = one.q.narrow(1, g * G, G);
          auto kh = one.k.narrow(1, g, 1);
          auto probs = model::causal_attention_probs(qh, kh, in.scale)[0];  // [G, T, T]
          auto kept = (probs * mask.narrow(0, g * G, G).to(probs.dtype())).sum(-1);  // [G, T]
          stats_.true_mass_kept += kept.sum().item<double>();
          stats_.true_mass_queries += static_cast<double>(G * T);
        }
      }
    }
    // CUDA kernels where they apply; the masked SDPA reference otherwise (same visibility rule).
    if (kernel_ok) {
      std::vector<kernels::HeadKind> kinds(Hkv, kernels::HeadKind::STREAMING);
      for (int64_t g : heads_.retrieval_heads(layer)) kinds[g] = kernels::HeadKind::RETRIEVAL;
      auto o = ops::sparse_attention(one.q[0].contiguous(), one.k[0].contiguous(), one.v[0].contiguous(), kinds, lists,
                                     to_ops_config(settings_));
      outs.push_back(o.unsqueeze(0));
    } else {
      auto k = one.k.repeat_interleave(G, 1);
      auto v = one.v.repeat_interleave(G, 1);
      outs.push_back(at::scaled_dot_product_attention(one.q, k, v, mask.unsqueeze(0), 0.0, false, in.scale));
    }
  }
  return Bsz == 1 ? outs[0] : torch::cat(outs, 0);
}

}  // namespace rtp::sparse
