#pragma once
// Attention over keys split into two disjoint parts, each part attended on its own and the results merged by their
// log-sum-exps. A prompt chunk's bottom-right causal attention is its queries over the keys before the chunk (no mask)
// and over the chunk's own keys (a square causal mask): two shapes a library's fastest kernels take (cuDNN on Hopper),
// where one bottom-right causal call is slower there (docs/decode.md, "A chunk's attention by cuDNN").
#include <torch/types.h>

#include <functional>

#include "rtp/model/attention_seam.h"

namespace rtp::model {

// One part's attention: its output [B, Hq, T, D] and the log-sum-exp of each query's scaled scores over the part's keys,
// [B, Hq, T] or [B, Hq, T, 1] (float32).
struct AttentionPart {
  torch::Tensor out, lse;
};

// One part by some kernel: q [B, Hq, Tq, D] over k, v [B, Hkv, Tk, D] (Hq a multiple of Hkv), causal = a square causal
// mask (Tq == Tk), else none.
using PartAttention = std::function<AttentionPart(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                                  bool causal, double scale)>;

// A chunk's causal attention (in.q the last Tq of Tk positions, 0 < Tq < Tk) as the two parts above, each by `part`,
// merged by ops::attention_merge (each part weighted by its share of the whole softmax sum; one kernel on a GPU).
torch::Tensor chunk_attention_in_two(const LayerAttentionInputs& in, const PartAttention& part);

}  // namespace rtp::model
