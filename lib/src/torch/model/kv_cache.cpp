#include "rtp/model/kv_cache.h"

#include <torch/torch.h>

#include <algorithm>

#include "rtp/core/error.h"
#include "rtp/ops/kv_token_store.h"
#include "rtp/ops/sparse_attention.h"

namespace rtp::model {

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  RTP_CHECK(layer >= 0 && layer < num_layers(), "KV cache: no layer ", layer);
  RTP_CHECK(k.dim() == 4 && v.sizes() == k.sizes(), "KV cache: k and v must be [B, Hkv, T, D] alike, found ", k.sizes(),
            " and ", v.sizes());
  auto& kc = k_[layer];
  auto& vc = v_[layer];
  int64_t& n = filled_[layer];
  const int64_t T = k.size(2), need = n + T;
  if (kc.defined())
    RTP_CHECK(kc.size(0) == k.size(0) && kc.size(1) == k.size(1) && kc.size(3) == k.size(3),
              "KV cache: layer ", layer, " holds [", kc.size(0), ", ", kc.size(1), ", *, ", kc.size(3), "], appended ",
              k.sizes());
  if (!kc.defined() || kc.size(2) < need) grow(layer, need, k.options(), k.size(0), k.size(1), k.size(3));
  kc.narrow(2, n, T).copy_(k);
  vc.narrow(2, n, T).copy_(v);
  n = need;
  return {kc.narrow(2, 0, n), vc.narrow(2, 0, n)};
}

void KVCache::grow(int64_t layer, int64_t need, const torch::TensorOptions& options, int64_t B, int64_t H, int64_t D) {
  auto& kc = k_[layer];
  auto& vc = v_[layer];
  const int64_t n = filled_[layer];
  const int64_t grown = kc.defined() ? kc.size(2) + kc.size(2) / 2 : 0;
  const int64_t capacity = std::max({need, reserve_, grown});
  auto nk = torch::empty({B, H, capacity, D}, options);
  auto nv = torch::empty({B, H, capacity, D}, options);
  if (n > 0) {
    nk.narrow(2, 0, n).copy_(kc.narrow(2, 0, n));
    nv.narrow(2, 0, n).copy_(vc.narrow(2, 0, n));
  }
  kc = nk, vc = nv;
  buffers_.reset();
}

std::shared_ptr<const void> KVCache::begin_step(int64_t position) {
  RTP_CHECK(position == length_, "KV cache: a decode step at position ", position, " of a cache holding ", length_,
            " tokens");
  for (size_t l = 0; l < k_.size(); ++l)
    if (!k_[l].defined() || filled_[l] != length_) return nullptr;
  for (size_t l = 0; l < k_.size(); ++l)
    if (k_[l].size(2) < position + 1)
      grow(static_cast<int64_t>(l), position + 1, k_[l].options(), k_[l].size(0), k_[l].size(1), k_[l].size(3));
  if (!buffers_) buffers_ = std::make_shared<int>(0);
  return buffers_;
}

void KVCache::store_token(const LayerAttentionInputs& in, const torch::Tensor& position) {
  // The slot comes from device memory: the same graph writes every position. On a GPU one kernel for k and v.
  if (k_[in.layer].is_cuda() && ops::kv_token_store_supported(k_[in.layer], v_[in.layer], in.k, in.v, position)) {
    ops::kv_token_store(k_[in.layer], v_[in.layer], in.k, in.v, position);
    return;
  }
  k_[in.layer].index_copy_(2, position, in.k);
  v_[in.layer].index_copy_(2, position, in.v);
}

TokenSlot KVCache::token_slot(int64_t layer, const torch::Tensor& position) const {
  // On a GPU the k and v buffers (made contiguous by grow) take the row copy of store_token in the projection's launch.
  if (layer < 0 || layer >= num_layers() || !k_[layer].defined() || !k_[layer].is_cuda()) return {};
  return {k_[layer], v_[layer], position};
}

void KVCache::attend_token(const LayerAttentionInputs& in, int64_t position, torch::Tensor& out) {
  filled_[in.layer] = position + 1;
  LayerAttentionInputs full = in;
  full.k = k_[in.layer].narrow(2, 0, position + 1);
  full.v = v_[in.layer].narrow(2, 0, position + 1);
  out.copy_(DenseAttention().attend(full));
}

bool KVCache::attends_on_device(int64_t query_heads) const {
  if (!device_attention_ || k_.empty() || !k_[0].defined()) return false;
  const auto& k = k_[0];  // [B, Hkv, capacity, D]; the decode kernel takes one sequence
  return k.is_cuda() && k.size(0) == 1 && ops::sparse_decode_gpu_takes(k.scalar_type(), k.size(3), query_heads, k.size(1));
}

void KVCache::attend_token_on_device(const LayerAttentionInputs& in, const torch::Tensor& position, torch::Tensor& out) {
  const auto& k = k_[in.layer];
  ops::DecodeInputs d;
  d.q = in.q[0].select(1, 0);  // [Hq, D]
  d.k_full = k[0];             // [Hkv, capacity, D]
  d.v_full = v_[in.layer][0];
  d.kv_len = k.size(2);  // the grid serves every length up to the capacity; the kernels read t from `position`
  d.position = position;
  d.out = out[0].select(1, 0);
  if (dense_kinds_.size() != static_cast<size_t>(k.size(1)))
    dense_kinds_.assign(static_cast<size_t>(k.size(1)), kernels::HeadKind::DENSE);
  ops::sparse_decode(d, dense_kinds_, ops::SparseConfig{});
}

void KVCache::end_step(int64_t position) { std::fill(filled_.begin(), filled_.end(), position + 1); }

void KVCache::clear() {
  std::fill(filled_.begin(), filled_.end(), 0);
  length_ = 0;
}

int64_t KVCache::bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < k_.size(); ++i)
    if (k_[i].defined())
      total += 2 * k_[i].size(0) * k_[i].size(1) * filled_[i] * k_[i].size(3) * static_cast<int64_t>(k_[i].element_size());
  return total;
}

int64_t KVCache::reserved_bytes() const {
  int64_t total = 0;
  for (size_t i = 0; i < k_.size(); ++i)
    if (k_[i].defined()) total += (k_[i].numel() + v_[i].numel()) * static_cast<int64_t>(k_[i].element_size());
  return total;
}

}  // namespace rtp::model
