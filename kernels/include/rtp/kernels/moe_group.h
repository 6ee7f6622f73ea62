#pragma once
// The grouping step of an MoE block over many tokens (a prompt chunk, a training batch): the (token, slot) pairs
// sorted by expert, so that each expert's GEMM reads its weights once over a contiguous run of rows. A stable
// counting sort: for S = N K slots with expert ids in [0, E),
//   row r (in expert order, slots of one expert in slot order) holds slot s = order[r]:
//   row_token[r] = s / K            the token whose activations row r takes
//   slot_row[s]  = r                the inverse permutation (moe_combine.h's input)
//   ends[e]      = #slots with expert <= e   (int32, the grouped GEMM's offsets)
// The same permutation as a stable sort of the ids (torch::sort(stable=true)), the same ends as searchsorted(right).
// On a GPU three kernels (per-tile counts, a scan over (expert, tile), a stable scatter per tile) replace a radix sort,
// a searchsorted, a division and an index_copy.
#include <cstddef>
#include <cstdint>

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

struct MoeGroupParams {
  const int64_t* expert = nullptr;  // [S], each in [0, E) (the router's output; not checked on the GPU)
  int64_t slots = 0;                // S = N K
  int64_t slots_per_token = 0;      // K
  int64_t experts = 0;              // E
  int64_t* row_token = nullptr;     // [S]
  int64_t* slot_row = nullptr;      // [S]
  int32_t* ends = nullptr;          // [E]
  void* workspace = nullptr;        // CUDA: moe_group_workspace_bytes(slots, experts) bytes, any content
};

// Most experts the CUDA kernels take (their per-tile counts live in shared memory).
constexpr int64_t kMoeGroupMaxExperts = 1024;

// Empty when usable, else what is wrong.
const char* check_moe_group_params(const MoeGroupParams& p, bool cuda);
// CPU reference; an id outside [0, E) is an error (thrown by the caller from this message), not UB.
const char* moe_group_cpu(const MoeGroupParams& p);

#ifdef RTPURBO_WITH_CUDA
size_t moe_group_workspace_bytes(int64_t slots, int64_t experts);
cudaError_t moe_group_cuda(const MoeGroupParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
