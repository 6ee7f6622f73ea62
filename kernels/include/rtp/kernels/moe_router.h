#pragma once
// The Qwen3-MoE router after its logits: softmax over the experts, the top-k, optionally renormalised, in one pass per
// token. Eagerly this is five to seven kernels (softmax in float32, topk, sum, divide, cast) per MoE layer, as many
// launches as the experts' own kernels in a decode step.
//
// Semantics (Hugging Face's order; float32 arithmetic):
//   p_e = exp(l_e - max l) / sum_e' exp(l_e' - max l)          (l the logits as float32)
//   expert[n, s] = the s-th largest p_e, s < K (ties: the lower expert id first)
//   weight[n, s] = p_expert[n,s] / sum_s' p_expert[n,s']   with norm_topk_prob, else p_expert[n,s]; rounded to dtype
// CPU reference: float32 logits, double arithmetic.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

// The CUDA kernel keeps a token's probabilities in one warp's registers.
constexpr int kMoeRouterMaxExperts = 512;
constexpr int kMoeRouterMaxTopK = 32;

struct MoeRouterParams {
  const void* logits = nullptr;  // [N, E] in `dtype`
  int64_t* expert = nullptr;     // [N, K]
  void* weight = nullptr;        // [N, K] in `dtype`
  int64_t tokens = 0, experts = 0, top_k = 0;
  bool norm_topk_prob = true;
  DType dtype = DType::F32;
};

const char* check_moe_router_params(const MoeRouterParams& p, bool cuda);
void moe_router_cpu(const MoeRouterParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t moe_router_cuda(const MoeRouterParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
