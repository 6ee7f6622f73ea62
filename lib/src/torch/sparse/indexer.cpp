#include "rtp/sparse/indexer.h"

#include <torch/torch.h>

#include "rtp/core/error.h"

namespace rtp::sparse {

Indexer::Indexer(const HeadMap& heads, int64_t head_dim, int64_t dim) : heads_(heads), head_dim_(head_dim), dim_(dim) {
  RTP_CHECK(dim > 0 && head_dim > 0, "indexer needs positive dimensions, found dim=", dim, ", head_dim=", head_dim);
  q_proj_.resize(heads.num_layers);
  k_proj_.resize(heads.num_layers);
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    const int64_t n = static_cast<int64_t>(heads.retrieval_heads(l).size());
    if (n == 0) continue;
    q_proj_[l] = torch::zeros({n * heads.group_size * dim, head_dim});
    k_proj_[l] = torch::zeros({n * dim, head_dim});
  }
}

torch::Tensor Indexer::index_queries(int64_t layer, const torch::Tensor& q) const {
  const auto ret = heads_.retrieval_heads(layer);
  const int64_t n = static_cast<int64_t>(ret.size()), G = heads_.group_size;
  RTP_CHECK(n > 0, "internal: index_queries on layer ", layer, " which has no retrieval heads");
  std::vector<int64_t> qheads;
  for (int64_t g : ret)
    for (int64_t j = 0; j < G; ++j) qheads.push_back(g * G + j);
  auto sel = q.index_select(1, torch::tensor(qheads, torch::TensorOptions(torch::kInt64).device(q.device())));
  auto w = q_proj_[layer].view({n * G, dim_, head_dim_}).to(sel.dtype());
  auto iq = torch::einsum("bhtd,hkd->bhtk", {sel, w});  // [B, n*G, T, dim]
  return iq.view({q.size(0), n, G, q.size(2), dim_});
}

torch::Tensor Indexer::index_keys(int64_t layer, const torch::Tensor& k) const {
  const auto ret = heads_.retrieval_heads(layer);
  const int64_t n = static_cast<int64_t>(ret.size());
  RTP_CHECK(n > 0, "internal: index_keys on layer ", layer, " which has no retrieval heads");
  auto sel = k.index_select(1, torch::tensor(ret, torch::TensorOptions(torch::kInt64).device(k.device())));
  auto w = k_proj_[layer].view({n, dim_, head_dim_}).to(sel.dtype());
  return torch::einsum("bhtd,hkd->bhtk", {sel, w});  // [B, n, T, dim]
}

std::vector<std::pair<std::string, torch::Tensor>> Indexer::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (int64_t l = 0; l < heads_.num_layers; ++l) {
    if (!q_proj_[l].defined()) continue;
    const std::string pre = "model.layers." + std::to_string(l) + ".self_attn.indexer.";
    out.emplace_back(pre + "q_proj.weight", q_proj_[l]);
    out.emplace_back(pre + "k_proj.weight", k_proj_[l]);
  }
  return out;
}

std::vector<torch::Tensor> Indexer::parameters() const {
  std::vector<torch::Tensor> out;
  for (auto& kv : named_parameters()) out.push_back(kv.second);
  return out;
}

void Indexer::to(torch::Device device, torch::ScalarType dtype) {
  for (auto* list : {&q_proj_, &k_proj_})
    for (auto& t : *list)
      if (t.defined()) {
        const bool grad = t.requires_grad();
        t = t.detach().to(device, dtype).set_requires_grad(grad);
      }
}

void Indexer::load_named(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& origin) {
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> given(tensors.begin(), tensors.end());
  for (auto& [name, t] : named_parameters()) {
    auto it = given.find(name);
    RTP_CHECK(it != given.end(), "'", origin, "': indexer tensor '", name, "' is missing (the head map has a retrieval ",
              "head in that layer)");
    RTP_CHECK(it->second.sizes() == t.sizes(), "'", origin, "': indexer tensor '", name, "' has shape ",
              it->second.sizes(), ", expected ", t.sizes(), " (head map, head_dim=", head_dim_, ", dim=", dim_, ")");
    t.copy_(it->second.to(t.device(), t.scalar_type()));
    given.erase(it);
  }
  RTP_CHECK(given.empty(), "'", origin, "': indexer tensor '", given.empty() ? "" : given.begin()->first,
            "' belongs to no retrieval head of the head map (head map and indexer disagree)");
}

}  // namespace rtp::sparse
