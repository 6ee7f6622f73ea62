#pragma once
// The learned indexer: per retrieval query head h a projection W_q[h] (dim x head_dim) and per retrieval
// KV head g a projection W_k[g] (dim x head_dim), applied to q and k after q_norm/k_norm (before RoPE unless
// post_rope_indexer). Index score s(i, j) = (W_q q_i) . (W_k k_j) / sqrt(dim).
#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

#include "rtp/sparse/head_map.h"

namespace rtp::sparse {

class Indexer {
 public:
  Indexer() = default;
  Indexer(const HeadMap& heads, int64_t head_dim, int64_t dim);

  const HeadMap& heads() const { return heads_; }
  int64_t dim() const { return dim_; }
  int64_t head_dim() const { return head_dim_; }

  // Per layer: q_proj [n_ret_kv * G * dim, head_dim] (query heads of the retrieval groups, in KV-head order),
  // k_proj [n_ret_kv * dim, head_dim]. Undefined tensors for layers without retrieval heads.
  torch::Tensor& q_proj(int64_t layer) { return q_proj_[layer]; }
  torch::Tensor& k_proj(int64_t layer) { return k_proj_[layer]; }
  const torch::Tensor& q_proj(int64_t layer) const { return q_proj_[layer]; }
  const torch::Tensor& k_proj(int64_t layer) const { return k_proj_[layer]; }

  // index_q [B, n_ret, G, T, dim] from the layer's q [B, Hq, T, D]; index_k [B, n_ret, T, dim] from k [B, Hkv, T, D].
  torch::Tensor index_queries(int64_t layer, const torch::Tensor& q) const;
  torch::Tensor index_keys(int64_t layer, const torch::Tensor& k) const;

  // HF-style names: model.layers.{i}.self_attn.indexer.{q_proj,k_proj}.weight
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;
  std::vector<torch::Tensor> parameters() const;
  void to(torch::Device device, torch::ScalarType dtype);
  void load_named(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& origin);

 private:
  HeadMap heads_;
  int64_t head_dim_ = 0, dim_ = 16;
  std::vector<torch::Tensor> q_proj_, k_proj_;
  // Per layer, the query heads and KV heads the projections apply to (int64, on the weights' device).
  std::vector<torch::Tensor> q_rows_, k_rows_;
};

}  // namespace rtp::sparse
