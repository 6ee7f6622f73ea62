#include "rtp/model/kv_cache.h"

#include <torch/torch.h>

#include <algorithm>

#include "rtp/core/error.h"

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
  if (!kc.defined() || kc.size(2) < need) {
    const int64_t grown = kc.defined() ? kc.size(2) + kc.size(2) / 2 : 0;
    const int64_t capacity = std::max({need, reserve_, grown});
    auto nk = torch::empty({k.size(0), k.size(1), capacity, k.size(3)}, k.options());
    auto nv = torch::empty({v.size(0), v.size(1), capacity, v.size(3)}, v.options());
    if (n > 0) {
      nk.narrow(2, 0, n).copy_(kc.narrow(2, 0, n));
      nv.narrow(2, 0, n).copy_(vc.narrow(2, 0, n));
    }
    kc = nk, vc = nv;
  }
  kc.narrow(2, n, T).copy_(k);
  vc.narrow(2, n, T).copy_(v);
  n = need;
  return {kc.narrow(2, 0, n), vc.narrow(2, 0, n)};
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
