#pragma once
// Dense KV cache: per layer the post-RoPE keys and the values of every token seen so far. Forward with a cache
// appends the new tokens' k/v and attends over cache + new tokens, so a prompt can be prefilled in chunks and
// generation runs one token at a time. (The sparse layout with ring buffers for streaming heads builds on it.)
#include <torch/types.h>

#include <vector>

namespace rtp::model {

class KVCache {
 public:
  explicit KVCache(int64_t num_layers) : k_(num_layers), v_(num_layers) {}
  int64_t length() const { return length_; }
  int64_t num_layers() const { return static_cast<int64_t>(k_.size()); }
  // Appends [B, Hkv, Tn, D] to layer `layer` and returns the whole cached k and v of that layer.
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  // Called by the model once every layer has appended a chunk of `tokens`.
  void advance(int64_t tokens) { length_ += tokens; }
  int64_t bytes() const;

 private:
  std::vector<torch::Tensor> k_, v_;
  int64_t length_ = 0;
};

}  // namespace rtp::model
