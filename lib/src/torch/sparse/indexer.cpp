#include "rtp/sparse/indexer.h"

#include <torch/torch.h>

#include "rtp/core/error.h"

namespace rtp::sparse {

Indexer::Indexer(const HeadMap& heads, int64_t head_dim, int64_t dim) : heads_(heads), head_dim_(head_dim), dim_(dim) {
  RTP_CHECK(dim > 0 && head_dim > 0, "indexer needs positive dimensions, found dim=", dim, ", head_dim=", head_dim);
  q_proj_.resize(heads.num_layers);
  k_proj_.resize(heads.num_layers);
  q_rows_.resize(heads.num_layers);
  k_rows_.resize(heads.num_layers);
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    const auto ret = heads.retrieval_heads(l);
    const int64_t n = static_cast<int64_t>(ret.size());
    if (n == 0) continue;
    q_proj_[l] = torch::zeros({n * heads.group_size * dim, head_dim});
    k_proj_[l] = torch::zeros({n * dim, head_dim});
    std::vector<int64_t> qheads;
    for (int64_t g : ret)
      for (int64_t j = 0; j < heads.group_size; ++j) qheads.push_back(g * heads.group_size + j);
    q_rows_[l] = torch::tensor(qheads, torch::kInt64);
    k_rows_[l] = torch::tensor(ret, torch::kInt64);
  }
}

namespace {
// The rows live where the weights were moved; a copy from host memory would wait for the device to finish its
// queue (a pageable upload), twice per retrieval layer and decoded token.
torch::Tensor rows_on(const torch::Tensor& rows, const torch::Device& device) {
  return rows.device() == device ? rows : rows.to(device);
}
}  // namespace

torch::Tensor Indexer::index_queries(int64_t layer, const torch::Tensor& q) const {
  RTP_CHECK(layer >= 0 && layer < static_cast<int64_t>(q_rows_.size()) && q_rows_[layer].defined(), "internal: index_queries on layer ", layer, " which has no retrieval heads");
  const int64_t n = k_rows_[layer].numel(), G = heads_.group_size;
  auto sel = q.index_select(1, rows_on(q_rows_[layer], q.device()));
  auto w = q_proj_[layer].view({n * G, dim_, head_dim_}).to(sel.dtype());
  auto iq = torch::einsum("bhtd,hkd->bhtk", {sel, w});  // [B, n*G, T, dim]
  return iq.view({q.size(0), n, G, q.size(2), dim_});
}

torch::Tensor Indexer::index_keys(int64_t layer, const torch::Tensor& k) const {
  RTP_CHECK(layer >= 0 && layer < static_cast<int64_t>(k_rows_.size()) && k_rows_[layer].defined(), "internal: index_keys on layer ", layer, " which has no retrieval heads");
  const int64_t n = k_rows_[layer].numel();
  auto sel = k.index_select(1, rows_on(k_rows_[layer], k.device()));
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
  for (auto* list : {&q_rows_, &k_rows_})
    for (auto& t : *list)
      if (t.defined()) t = t.to(device);
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
