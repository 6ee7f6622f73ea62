#pragma once
// The last step of an MoE block over many tokens: each token's K expert outputs, computed in expert order (the
// (token, slot) pairs sorted by expert so that each expert's GEMM reads its weights once), weighted and summed back
// into token order. Eagerly three passes over the [N K, H] products (scale, un-sort, sum); here one gather.
//
// Semantics: out[n, h] = round( sum_{k < K} weight[n K + k] * rows[slot_row[n K + k], h] ), products and sum in
// float32 (double in the CPU reference), one rounding to the element type. slot_row: the row of `rows` holding slot
// (n, k), i.e. the inverse of the expert sort's permutation; rows are `row_stride` elements apart; out is
// contiguous [N, H].
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct MoeCombineParams {
  const void* rows = nullptr;        // [N K, H] in dtype, rows row_stride apart
  const int64_t* slot_row = nullptr;  // [N K], each in [0, N K)
  const float* weight = nullptr;      // [N K]
  void* out = nullptr;                // [N, H] in dtype
  int64_t tokens = 0, slots_per_token = 0, hidden = 0, row_stride = 0;
  DType dtype = DType::F32;
};

// cuda: the kernel reads 16-byte vectors, so hidden and row_stride must be multiples of 16 bytes and rows / out
// 16-byte aligned (moe_combine_cuda_takes).
const char* check_moe_combine_params(const MoeCombineParams& p, bool cuda);
bool moe_combine_cuda_takes(const MoeCombineParams& p);
void moe_combine_cpu(const MoeCombineParams& p);  // F32 only; slot_row entries are trusted (checked by the caller)

#ifdef RTPURBO_WITH_CUDA
cudaError_t moe_combine_cuda(const MoeCombineParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
