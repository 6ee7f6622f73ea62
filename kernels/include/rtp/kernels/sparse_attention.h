#pragma once
// Entry points of the sparse-attention kernels; the semantics are in sparse_attention_params.h.
// CPU references are always compiled (plain loops, double accumulation). CUDA launchers exist only with
// RTPURBO_WITH_CUDA and return cudaError_t (cudaErrorInvalidValue for bad parameters); no exceptions here.
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

// Returns an empty string when the parameters are usable, else what is wrong (the CPU references call this
// and do nothing on error; the torch ops turn the message into an exception).
const char* check_block_select_params(const BlockSelectParams& p);
const char* check_sparse_attention_params(const SparseAttentionParams& p, bool cuda);
const char* check_sparse_decode_params(const SparseDecodeParams& p, bool cuda);

void select_blocks_cpu(const BlockSelectParams& p);
void sparse_attention_cpu(const SparseAttentionParams& p);
void sparse_decode_cpu(const SparseDecodeParams& p);

// Helpers for tests and the benchmark (CPU, float): true token-level indexer mass recall of a selection,
// averaged over the queries of every (retrieval slot, query head): sum over selected-block causal keys of
// softmax_j(s(i, j)) for each query i. Queries i with i % query_stride != 0 are skipped.
double selection_recall_cpu(const BlockSelectParams& p, int64_t query_stride);

#ifdef RTPURBO_WITH_CUDA
cudaError_t select_blocks_cuda(const BlockSelectParams& p, cudaStream_t stream);
// Scratch bytes select_blocks_cuda needs for these parameters (0 if they are invalid).
size_t select_blocks_workspace_bytes(const BlockSelectParams& p);
cudaError_t sparse_attention_cuda(const SparseAttentionParams& p, cudaStream_t stream);
// Whether PrefillKernel::WGMMA can run on the current device (an sm_90a build on a compute capability 9.0 GPU).
bool prefill_wgmma_available();
cudaError_t sparse_decode_cuda(const SparseDecodeParams& p, cudaStream_t stream);
// Scratch bytes sparse_decode_cuda needs for these parameters (0 if they are invalid).
size_t sparse_decode_workspace_bytes(const SparseDecodeParams& p);
#endif

}  // namespace rtp::kernels
