#pragma once
// Torch-facing dense KV cache store of one decoded token (rtp/kernels/kv_token_store.h).
#include <torch/types.h>

namespace rtp::ops {

// Whether kv_token_store takes these tensors: caches contiguous [B, H, capacity, D] of one dtype (2 or 4 bytes) on
// one device, k and v [B, H, 1, D] alike with unit element stride, position int64 [1] there.
bool kv_token_store_supported(const torch::Tensor& k_cache, const torch::Tensor& v_cache, const torch::Tensor& k,
                              const torch::Tensor& v, const torch::Tensor& position);

// k_cache[:, :, position] = k[:, :, 0], v likewise: one kernel on a GPU, the CPU reference on the CPU.
void kv_token_store(torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& k, const torch::Tensor& v,
                    const torch::Tensor& position);

}  // namespace rtp::ops
