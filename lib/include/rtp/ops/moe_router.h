#pragma once
// Torch-facing MoE routing (rtp/kernels/moe_router.h): softmax over the router logits, top-k and the optional
// renormalisation, one kernel on a GPU, Hugging Face's eager ops elsewhere.
#include <torch/types.h>

#include <utility>

namespace rtp::ops {

// Whether moe_route takes the kernel: a CUDA build, logits [N, E] on a GPU in bf16 or float32 that need no gradient,
// E <= 512, top_k <= 32.
bool fused_moe_route_supported(const torch::Tensor& logits, int64_t top_k);

// logits [N, E] -> (expert int64 [N, K], routing weight [N, K] in the logits' dtype), the experts by descending
// probability.
std::pair<torch::Tensor, torch::Tensor> moe_route(const torch::Tensor& logits, int64_t top_k, bool norm_topk_prob);

}  // namespace rtp::ops
