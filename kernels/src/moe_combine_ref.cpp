// Plain-loop CPU reference of moe_combine.h (double arithmetic) and the parameter checks shared with CUDA.
#include <cstdint>

#include "rtp/kernels/moe_combine.h"

namespace rtp::kernels {

const char* check_moe_combine_params(const MoeCombineParams& p, bool cuda) {
  if (!p.rows || !p.slot_row || !p.weight || !p.out) return "moe_combine: a pointer is null";
  if (p.tokens <= 0 || p.slots_per_token <= 0 || p.hidden <= 0) return "moe_combine: tokens, slots and hidden must be positive";
  if (p.row_stride < p.hidden) return "moe_combine: row_stride must be at least hidden";
  if (!cuda && p.dtype != DType::F32) return "moe_combine: the CPU reference takes float32 only";
  if (cuda && !moe_combine_cuda_takes(p))
    return "moe_combine: the CUDA kernel needs hidden and row_stride in 16-byte multiples and 16-byte aligned rows and out";
  return "";
}

bool moe_combine_cuda_takes(const MoeCombineParams& p) {
  const int64_t vec = p.dtype == DType::BF16 ? 8 : 4;
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return p.hidden % vec == 0 && p.row_stride % vec == 0 && aligned(p.rows) && aligned(p.out);
}

void moe_combine_cpu(const MoeCombineParams& p) {
  if (*check_moe_combine_params(p, false)) return;
  const auto* rows = static_cast<const float*>(p.rows);
  auto* out = static_cast<float*>(p.out);
  for (int64_t n = 0; n < p.tokens; ++n)
    for (int64_t h = 0; h < p.hidden; ++h) {
      double acc = 0;
      for (int64_t k = 0; k < p.slots_per_token; ++k) {
        const int64_t s = n * p.slots_per_token + k;
        acc += double(p.weight[s]) * rows[p.slot_row[s] * p.row_stride + h];
      }
      out[n * p.hidden + h] = static_cast<float>(acc);
    }
}

}  // namespace rtp::kernels
