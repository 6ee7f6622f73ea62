#pragma once
// Torch-facing merge of two attention outputs over disjoint key sets (rtp/kernels/attention_merge.h): one kernel on a
// GPU, where the eager ops take four passes over the outputs.
#include <torch/types.h>

namespace rtp::ops {

// a, b [B, H, T, D] of one dtype; lse_a, lse_b the log-sum-exps of their scaled scores, [B, H, T] or [B, H, T, 1].
// Returns sigmoid(lse_a - lse_b) * a + (1 - sigmoid(lse_a - lse_b)) * b in float32 arithmetic, a's dtype and memory
// layout. The CUDA kernel for bfloat16 / float32 GPU tensors with a contiguous last dimension where no gradient must
// flow (it has no backward); the eager ops otherwise.
torch::Tensor attention_merge(const torch::Tensor& a, const torch::Tensor& lse_a, const torch::Tensor& b,
                              const torch::Tensor& lse_b);

}  // namespace rtp::ops
