#pragma once
// One decoded token's k and v rows of every (batch, KV head) into a dense KV cache, at a position read from device
// memory (so one CUDA graph serves every step), in one launch where the eager path takes two indexed copies.
//
//   k_cache[b, h, position, :] = k[b, h, :]      v_cache[b, h, position, :] = v[b, h, :]
// Source rows at b * batch_stride + h * head_stride elements (unit element stride); caches contiguous
// [batch, heads, capacity, head_dim]. A position outside [0, capacity) writes nothing. Bytes are copied as they are.
#include <cstdint>

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct KvTokenStoreParams {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_batch_stride = 0, k_head_stride = 0, v_batch_stride = 0, v_head_stride = 0;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t batch = 0, heads = 0, capacity = 0, head_dim = 0;
  int element_bytes = 4;             // 2 (bf16, fp16) or 4 (float32)
  const int64_t* position = nullptr;  // device (host for the CPU reference)
};

const char* check_kv_token_store_params(const KvTokenStoreParams& p);
void kv_token_store_cpu(const KvTokenStoreParams& p);

#ifdef RTPURBO_WITH_CUDA
cudaError_t kv_token_store_cuda(const KvTokenStoreParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
