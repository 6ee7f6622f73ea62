#pragma once
// One decoded token's writes into a layer's sparse KV cache (layout of sparse_attention_params.h), in one launch:
// each retrieval KV head's k/v row into the full caches at `position` with its index key, each streaming KV head's
// k/v row into the ring at `ring_slot`, and the index queries of the retrieval heads' query heads for this step.
// Eagerly this is a dozen small kernels per layer (row gathers, indexed copies, two einsums with their casts), which
// in a one-token decode step cost more than the bytes they move.
//
// Semantics (g a KV head, r its retrieval slot or s its streaming slot, G = group size, I = index_dim, D = head_dim):
//   full_k[r, position, :] = k[g, :]          full_v[r, position, :] = v[g, :]           (retrieval heads)
//   index_keys[r, position, i] = sum_d index_k_weight[r, i, d] * index_k_src[g, d]        (i < I)
//   index_q_out[r, j, i]       = sum_d index_q_weight[r * G + j, i, d] * index_q_src[g * G + j, d]   (j < G)
//   ring_k[s, ring_slot, :] = k[g, :]         ring_v[s, ring_slot, :] = v[g, :]          (streaming heads)
// position and ring_slot are read from device memory (one CUDA graph serves every step). The sums accumulate in
// float32 and round once to the output's type. CPU reference: float32 throughout, double sums.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

// KV heads one launch can take (Qwen3 and Qwen3-MoE have 2 to 8).
constexpr int kTokenStoreMaxKvHeads = 32;

struct SparseTokenStoreParams {
  DType dtype = DType::F32;        // k, v, sources, weights, caches, index_q_out
  DType index_dtype = DType::F32;  // index_keys (bf16 on a GPU whatever the model's dtype)
  int kv_heads = 0, group_size = 1, head_dim = 0, index_dim = 0;
  // Per KV head: its retrieval slot (ring_slot_of < 0) or its streaming slot (retrieval_slot_of < 0).
  int8_t retrieval_slot_of[kTokenStoreMaxKvHeads] = {};
  int8_t streaming_slot_of[kTokenStoreMaxKvHeads] = {};
  // This token's rows: KV head g's row at g * *_head_stride (elements); query head h's at h * index_q_src_head_stride.
  const void* k = nullptr;
  const void* v = nullptr;
  const void* index_k_src = nullptr;  // the keys the indexer reads (pre- or post-RoPE)
  const void* index_q_src = nullptr;  // the queries the indexer reads, [kv_heads * group_size] rows
  int64_t k_head_stride = 0, v_head_stride = 0, index_k_src_head_stride = 0, index_q_src_head_stride = 0;
  // Retrieval heads (may be null when there are none): [Hret, full_capacity, D], [Hret, full_capacity, I],
  // weights [Hret, I, D] and [Hret * G, I, D], index_q_out [Hret, G, I].
  void* full_k = nullptr;
  void* full_v = nullptr;
  void* index_keys = nullptr;
  const void* index_k_weight = nullptr;
  const void* index_q_weight = nullptr;
  void* index_q_out = nullptr;
  int64_t full_capacity = 0;
  // Streaming heads (may be null when there are none): [Hstr, ring_capacity, D].
  void* ring_k = nullptr;
  void* ring_v = nullptr;
  int64_t ring_capacity = 0;
  const int64_t* position = nullptr;   // device (host for the CPU reference)
  const int64_t* ring_slot = nullptr;  // device (host for the CPU reference); read only with streaming heads
};

const char* check_sparse_token_store_params(const SparseTokenStoreParams& p, bool cuda);
void sparse_token_store_cpu(const SparseTokenStoreParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t sparse_token_store_cuda(const SparseTokenStoreParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
