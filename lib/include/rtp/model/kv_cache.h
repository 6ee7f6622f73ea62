#pragma once
// Dense KV cache: per layer the post-RoPE keys and the values of every token seen so far. Forward with a cache
// appends the new tokens' k/v and attends over cache + new tokens, so a prompt can be prefilled in chunks and
// generation runs one token at a time. (The sparse layout with ring buffers for streaming heads builds on it.)
//
// The tokens live in a buffer per layer that new tokens are written into in place; a step returns views of the filled
// part. Concatenating instead copied the whole cache on every token: at 32K tokens of a 0.6B model, 0.9 GB per step.
// As a StepAttention (step_attention.h) the decode stepper's graphs write each token into the buffers themselves and,
// for one bf16 sequence on a GPU with head_dim 64 or 128, attend too: the CUDA decode kernel with every head DENSE
// (rtp/ops/sparse_attention.h) reads the length from device memory, so one graph holds the whole step. Eagerly
// (forward) the attention stays FlashAttention through libtorch.
#include <torch/types.h>

#include <memory>
#include <vector>

#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/model/step_attention.h"

namespace rtp::model {

class KVCache : public StepAttention {
 public:
  explicit KVCache(int64_t num_layers) : k_(num_layers), v_(num_layers), filled_(num_layers, 0) {}
  int64_t length() const { return length_; }
  int64_t num_layers() const { return static_cast<int64_t>(k_.size()); }
  // Room for `tokens` tokens, allocated at the first append (when batch, heads, head_dim and dtype are known). Without
  // it the buffers grow by half of what they hold whenever they are full.
  void reserve(int64_t tokens) { reserve_ = tokens; }
  // Appends [B, Hkv, Tn, D] to layer `layer` and returns views of the whole cached k and v of that layer
  // ([B, Hkv, filled, D], innermost dimension contiguous).
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  // Called by the model once every layer has appended a chunk of `tokens`.
  void advance(int64_t tokens) { length_ += tokens; }
  // Forgets every token but keeps the buffers, so that a decode stepper's graphs for them stay valid (an eval reuses
  // one cache for its samples instead of capturing per sample).
  void clear();
  // Bytes of the tokens held (k and v of every layer); reserved_bytes(): of the buffers allocated.
  int64_t bytes() const;
  int64_t reserved_bytes() const;

  // StepAttention: dense attention over the cache, one token at a time after a prefill (null from begin_step before
  // any append: the buffers' shapes are not known yet).
  std::shared_ptr<const void> begin_step(int64_t position) override;
  void store_token(const LayerAttentionInputs& in, const torch::Tensor& position) override;
  TokenSlot token_slot(int64_t layer, const torch::Tensor& position) const override;
  void attend_token(const LayerAttentionInputs& in, int64_t position, torch::Tensor& out) override;
  bool attends_on_device(int64_t query_heads) const override;
  void attend_token_on_device(const LayerAttentionInputs& in, const torch::Tensor& position, torch::Tensor& out) override;
  void end_step(int64_t position) override;
  // false: the steps attend through attend_token (FlashAttention, between the graphs), e.g. for comparisons.
  void set_device_attention(bool on) { device_attention_ = on; }

 private:
  // New buffers of at least `need` tokens for layer `layer` (keeping what it holds): the larger of need, the
  // reservation and half again the current capacity.
  void grow(int64_t layer, int64_t need, const torch::TensorOptions& options, int64_t B, int64_t H, int64_t D);

  std::vector<torch::Tensor> k_, v_;  // [B, Hkv, capacity, D]
  std::vector<int64_t> filled_;
  int64_t length_ = 0;
  int64_t reserve_ = 0;
  std::shared_ptr<const void> buffers_;  // begin_step's token; reset whenever a buffer is reallocated
  bool device_attention_ = true;
  std::vector<kernels::HeadKind> dense_kinds_;  // attend_token_on_device: every KV head DENSE
};

}  // namespace rtp::model
