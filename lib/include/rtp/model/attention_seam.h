#pragma once
// The one place where a layer's attention is computed. The model prepares q, k, v (normalised, RoPE applied)
// and hands them here; dense SDPA is the default, later the sparse forward replaces it per head.
#include <torch/types.h>

#include <memory>

namespace rtp::model {

struct LayerAttentionInputs {
  int64_t layer = 0;
  // [B, Hq, T, D] and [B, Hkv, T, D]: after q_norm/k_norm, before RoPE (indexers and head profiling use these).
  torch::Tensor q_pre_rope, k_pre_rope;
  // [B, Hq, T, D], [B, Hkv, T, D], [B, Hkv, T, D]: what attention uses.
  torch::Tensor q, k, v;
  double scale = 1.0;
  // A decode step's token already written into the cache by the projection's launch (TokenSlot): the cache's
  // store_token is not to run for it.
  bool token_stored = false;
};

// Where a decode step's projection may store the token itself (ops::QkvTokenStore): a dense cache's k and v buffers of
// the layer [B, Hkv, capacity, D] and the slot (int64 [1] on the device). Undefined: the cache stores it.
struct TokenSlot {
  torch::Tensor k_cache, v_cache, position;
  bool defined() const { return k_cache.defined(); }
};

class AttentionSeam {
 public:
  virtual ~AttentionSeam() = default;
  // Returns [B, Hq, T, D]: causal attention of q over k/v (GQA: query head h reads KV head h / group size).
  virtual torch::Tensor attend(const LayerAttentionInputs& in) = 0;
};

// How a prompt chunk after the first (its queries the last of more keys: a bottom-right causal mask) attends on a GPU.
enum class ChunkAttention {
  // Its queries over the keys before it (no mask) and over its own keys (square causal) by cuDNN, merged by their
  // log-sum-exps (attention_parts.h): 1.3-1.9x faster than FlashAttention-2 on an H100 at 8K-36K keys, for some 37 ms
  // of cuDNN execution plan per new pair of lengths (docs/decode.md). Bfloat16/float16 on Hopper with head_dim <= 128;
  // elsewhere Flash.
  SplitCudnn,
  Flash,  // FlashAttention-2's bottom-right causal mask in one call
};

// Causal GQA attention through torch's scaled_dot_product_attention and its fused kernels.
class DenseAttention : public AttentionSeam {
 public:
  explicit DenseAttention(ChunkAttention chunk = ChunkAttention::SplitCudnn) : chunk_(chunk) {}
  torch::Tensor attend(const LayerAttentionInputs& in) override;

 private:
  ChunkAttention chunk_;
};

// Reference causal attention with explicit probabilities: softmax(q k^T * scale + causal mask), fp32.
// Returns probabilities [B, Hq, T, T]; used by tests and by the small-model paths that need them whole.
torch::Tensor causal_attention_probs(const torch::Tensor& q, const torch::Tensor& k, double scale);

}  // namespace rtp::model
