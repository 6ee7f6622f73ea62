#include "rtp/sparse/sparse_cache.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/ops/sparse_attention.h"

namespace rtp::sparse {

SparseCache::SparseCache(const model::ModelConfig& config, HeadMap heads, SparseSettings settings,
                         const Indexer* indexer, int64_t capacity, torch::Device device, torch::ScalarType dtype)
    : config_(config),
      heads_(std::move(heads)),
      settings_(settings),
      indexer_(indexer),
      capacity_(capacity),
      prefill_(heads_, settings_, indexer) {
  RTP_CHECK(capacity > 0, "sparse cache: capacity must be positive, found ", capacity);
  const int64_t L = config.num_hidden_layers, D = config.head_dim;
  auto opt = torch::TensorOptions(dtype).device(device);
  element_size_ = static_cast<int64_t>(torch::empty({}, opt).element_size());
  kinds_.resize(L);
  full_k_.resize(L), full_v_.resize(L), index_k_.resize(L), ring_k_.resize(L), ring_v_.resize(L), last_selected_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    int64_t n_ret = 0, n_str = 0;
    for (int64_t g = 0; g < config.num_key_value_heads; ++g) {
      const bool r = heads_.is_retrieval(l, g);
      kinds_[l].push_back(r ? kernels::HeadKind::RETRIEVAL : kernels::HeadKind::STREAMING);
      (r ? n_ret : n_str) += 1;
    }
    RTP_CHECK(n_ret == 0 || indexer != nullptr, "sparse cache: layer ", l, " has retrieval heads but no indexer");
    if (n_ret > 0) {
      full_k_[l] = torch::zeros({n_ret, capacity, D}, opt);
      full_v_[l] = torch::zeros({n_ret, capacity, D}, opt);
      index_k_[l] = torch::zeros({n_ret, capacity, settings.indexer_dim}, opt.dtype(torch::kFloat32));
    }
    if (n_str > 0) {
      ring_k_[l] = torch::zeros({n_str, settings.sink + settings.window, D}, opt);
      ring_v_[l] = torch::zeros({n_str, settings.sink + settings.window, D}, opt);
    }
  }
}

model::ForwardOptions SparseCache::options() {
  model::ForwardOptions o;
  o.attention = this;
  o.position_offset = length_;
  return o;
}

void SparseCache::write_token(int64_t layer, int64_t position, const model::LayerAttentionInputs& in, int64_t row) {
  int64_t r = 0, s = 0;
  const int64_t slot = position < settings_.sink ? position : settings_.sink + (position - settings_.sink) % settings_.window;
  for (int64_t g = 0; g < config_.num_key_value_heads; ++g) {
    auto k = in.k[0][g][row];
    auto v = in.v[0][g][row];
    if (kinds_[layer][g] == kernels::HeadKind::RETRIEVAL) {
      full_k_[layer][r][position].copy_(k);
      full_v_[layer][r][position].copy_(v);
      ++r;
    } else {
      // Only tokens still visible to a later query need a slot; later tokens overwrite earlier ones.
      ring_k_[layer][s][slot].copy_(k);
      ring_v_[layer][s][slot].copy_(v);
      ++s;
    }
  }
}

void SparseCache::write_prompt(int64_t layer, const model::LayerAttentionInputs& in, int64_t T) {
  // One copy per head instead of one per (token, head): a 32K-token prompt in a 48-layer model would otherwise
  // issue millions of row copies. Streaming heads keep the sink and the last `window` tokens, each in the slot
  // write_token would have left it in.
  const int64_t sink = std::min(settings_.sink, T);
  const int64_t first = std::max(settings_.sink, T - settings_.window);
  torch::Tensor slots, rows;
  if (first < T) {
    rows = torch::arange(first, T, torch::TensorOptions().dtype(torch::kInt64));
    slots = (settings_.sink + (rows - settings_.sink).remainder(settings_.window)).to(in.k.device());
    rows = rows.to(in.k.device());
  }
  int64_t r = 0, s = 0;
  for (int64_t g = 0; g < config_.num_key_value_heads; ++g) {
    const auto k = in.k[0][g], v = in.v[0][g];  // [T, D]
    if (kinds_[layer][g] == kernels::HeadKind::RETRIEVAL) {
      full_k_[layer][r].narrow(0, 0, T).copy_(k);
      full_v_[layer][r].narrow(0, 0, T).copy_(v);
      ++r;
    } else {
      ring_k_[layer][s].narrow(0, 0, sink).copy_(k.narrow(0, 0, sink));
      ring_v_[layer][s].narrow(0, 0, sink).copy_(v.narrow(0, 0, sink));
      if (slots.defined()) {
        ring_k_[layer][s].index_copy_(0, slots, k.index_select(0, rows).to(ring_k_[layer].scalar_type()));
        ring_v_[layer][s].index_copy_(0, slots, v.index_select(0, rows).to(ring_v_[layer].scalar_type()));
      }
      ++s;
    }
  }
}

torch::Tensor SparseCache::attend(const model::LayerAttentionInputs& in) {
  RTP_CHECK(in.q.size(0) == 1, "sparse cache: one sequence at a time, found batch ", in.q.size(0));
  const int64_t l = in.layer, T = in.q.size(2);
  const int64_t start = length_;
  RTP_CHECK(start + T <= capacity_, "sparse cache: ", start + T, " tokens exceed the capacity ", capacity_);
  torch::NoGradGuard no_grad;
  const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
  const auto& qsrc = settings_.post_rope_indexer ? in.q : in.q_pre_rope;
  const bool has_ret = full_k_[l].defined();
  torch::Tensor out;
  if (start == 0) {
    out = prefill_.attend(in);
    write_prompt(l, in, T);
    if (has_ret) index_k_[l].narrow(1, 0, T).copy_(indexer_->index_keys(l, ksrc)[0]);
  } else {
    RTP_CHECK(T == 1, "sparse cache: after the prompt, tokens come one at a time (found ", T, ")");
    write_token(l, start, in, 0);
    ops::DecodeInputs d;
    d.q = in.q[0].select(1, 0);  // [Hq, D]
    d.kv_len = start + 1;
    if (has_ret) {
      index_k_[l].narrow(1, start, 1).copy_(indexer_->index_keys(l, ksrc)[0]);
      d.k_full = full_k_[l];
      d.v_full = full_v_[l];
      d.index_q = indexer_->index_queries(l, qsrc)[0].select(3, 0);  // [n, G, dim]
      d.index_k = index_k_[l];
    }
    if (ring_k_[l].defined()) {
      d.k_ring = ring_k_[l];
      d.v_ring = ring_v_[l];
    }
    auto o = ops::sparse_decode(d, kinds_[l], to_ops_config(settings_), &last_selected_[l]);
    out = o.to(in.q.scalar_type()).unsqueeze(1).unsqueeze(0);  // [1, Hq, 1, D]
  }
  if (l == config_.num_hidden_layers - 1) length_ += T;
  return out;
}

int64_t SparseCache::layer_bytes(int64_t layer) const {
  RTP_CHECK(layer >= 0 && layer < static_cast<int64_t>(kinds_.size()), "sparse cache: no layer ", layer);
  int64_t n = 0;
  const int64_t D = config_.head_dim;
  for (auto k : kinds_[static_cast<size_t>(layer)])
    n += k == kernels::HeadKind::RETRIEVAL ? length_ * (2 * D + settings_.indexer_dim)
                                           : std::min(length_, settings_.sink + settings_.window) * 2 * D;
  return n * element_size_;
}

int64_t SparseCache::bytes() const {
  int64_t n = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(kinds_.size()); ++l) n += layer_bytes(l);
  return n;
}

int64_t SparseCache::dense_bytes() const {
  return config_.num_hidden_layers * config_.num_key_value_heads * length_ * 2 * config_.head_dim * element_size_;
}

}  // namespace rtp::sparse
