#pragma once
// Torch-facing sparse attention ops: check shapes, dtypes and devices, then dispatch the CPU reference
// (float32 CPU tensors) or the CUDA kernels (bf16 CUDA tensors; index tensors bf16 or float32).
// Semantics: rtp/kernels/sparse_attention_params.h.
#include <torch/types.h>

#include <string>
#include <vector>

#include "rtp/kernels/sparse_attention_params.h"

namespace rtp::ops {

struct SparseConfig {
  int64_t sink = 4, window = 8192;
  int block_size = 64;
  int local_blocks = 1;
  float top_p = 0.9f;
  int query_sub_blocks = 1;  // prefill selection: pooled queries per query block (sparse_attention_params.h)
  kernels::BlockAggregate sub_block_aggregate = kernels::BlockAggregate::MEAN;  // prefill selection: MEAN or MAX
  int64_t keep_first = 64, keep_last = 64;  // decode
  kernels::PrefillKernel prefill_kernel = kernels::PrefillKernel::AUTO;  // CUDA prefill attention kernel
  kernels::DecodeTuning decode_tuning{};  // CUDA decode launch choices (same results up to rounding)
};

// "mean" -> MEAN, "max" -> MAX; anything else throws (the recipe / rtpurbo.json / export spelling).
kernels::BlockAggregate parse_block_aggregate(const std::string& name);

struct BlockLists {
  torch::Tensor counts;   // int32 [Hkv_ret, n_blocks]
  torch::Tensor indices;  // int32 [Hkv_ret, n_blocks, max_blocks]
};

// index_q [Hkv_ret, G, Tq, 16], index_k [Hkv_ret, T, 16], T = q_offset + Tq (q_offset > 0: a chunk of queries
// after the cached ones, a multiple of block_size). Lists for the query blocks q_offset / block_size ..
// n_blocks - 1. max_blocks <= 0: n_blocks (never cuts).
BlockLists select_blocks(const torch::Tensor& index_q, const torch::Tensor& index_k, const SparseConfig& cfg,
                         int64_t max_blocks = 0, int64_t q_offset = 0);

// q [Hq, Tq, D] (positions q_offset..), k/v [Hkv, T - stream_key_skip, D] with T = q_offset + Tq; kinds one per
// KV head; lists from select_blocks with the same q_offset. Returns o [Hq, Tq, D]. k/v may be strided views
// (a cache's first T rows): they are read in place when the dtype already matches. Lists given on the host are
// checked against the contract (counts in [0, max_blocks], entries ascending, unique, at most their query block);
// lists on the GPU are not (that would need a copy back per call).
//
// `into`, optional: the call covers some of a layer's KV heads, q holds all the layer's query heads, and the outputs go
// into `into->out` (q's shape) in place: no gather of the queries, no scatter of the outputs (a prompt chunk attends
// its retrieval and its streaming heads in two calls over different caches). Returns into->out then.
struct QueryGroupsInto {
  std::vector<int32_t> group;  // per KV head of the call: the query group (heads group * G .. + G - 1) it reads and writes
  int64_t group_size = 0;      // G
  torch::Tensor out;           // [q.size(0), Tq, D]; heads of groups the call does not name are left as they are
};
torch::Tensor sparse_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const std::vector<kernels::HeadKind>& kinds, const BlockLists& lists,
                               const SparseConfig& cfg, int64_t q_offset = 0, int64_t stream_key_skip = 0,
                               const QueryGroupsInto* into = nullptr);

struct DecodeInputs {
  torch::Tensor q;                 // [Hq, D]
  torch::Tensor k_full, v_full;    // [Hfull, cap, D]
  torch::Tensor k_ring, v_ring;    // [Hstr, sink + window, D]
  torch::Tensor index_q, index_k;  // [Hkv_ret, G, 16], [Hkv_ret, cap, 16]
  int64_t kv_len = 0;
  // Optional, int64 [1] on q's device holding t: on a GPU the kernels read the length there (kv_len is then the
  // longest length the call may see, e.g. the cache's capacity), so that a CUDA graph of the call serves every step;
  // the result equals that of kv_len = t + 1 given on the host. On the CPU it is read once (kv_len = t + 1).
  torch::Tensor position;
  // Optional: where o goes ([Hq, D] of q's dtype; written in place when contiguous and of the kernel's dtype, else
  // copied), and an int32 [max(1, Hkv_ret)] buffer for the selected counts (each retrieval head's entry is set; the
  // others are left as they are). Callers that decode every token keep both, instead of two allocations per layer and
  // step.
  torch::Tensor out, selected;
};
// Returns o [Hq, D] (`out` when given). selected_count: the tokens each retrieval head attended.
// Whether the CUDA decode kernels take caches of this dtype and shape as they are (bf16, head_dim 64 or 128, up to 64
// KV heads, groups of up to 16 query heads) in a build with CUDA: the caches attend on the device only then.
bool sparse_decode_gpu_takes(torch::ScalarType dtype, int64_t head_dim, int64_t query_heads, int64_t kv_heads);

torch::Tensor sparse_decode(const DecodeInputs& in, const std::vector<kernels::HeadKind>& kinds,
                            const SparseConfig& cfg, torch::Tensor* selected_count = nullptr);

}  // namespace rtp::ops
