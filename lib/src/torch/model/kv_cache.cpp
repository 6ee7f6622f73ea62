#include "rtp/model/kv_cache.h"

#include <torch/torch.h>

namespace rtp::model {

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  auto& kc = k_[layer];
  auto& vc = v_[layer];
  kc = kc.defined() ? torch::cat({kc, k}, 2) : k.contiguous();
  vc = vc.defined() ? torch::cat({vc, v}, 2) : v.contiguous();
  return {kc, vc};
}

int64_t KVCache::bytes() const {
  int64_t n = 0;
  for (size_t i = 0; i < k_.size(); ++i)
    if (k_[i].defined()) n += (k_[i].numel() + v_[i].numel()) * static_cast<int64_t>(k_[i].element_size());
  return n;
}

}  // namespace rtp::model
