// Plain-loop CPU reference of swiglu.h (double arithmetic) and the parameter check shared with CUDA.
#include <cmath>

#include "rtp/kernels/swiglu.h"

namespace rtp::kernels {

const char* check_swiglu_params(const SwiGluParams& p, bool cuda) {
  if (!p.gate || !p.up || !p.out) return "swiglu: a tensor pointer is null";
  if (p.rows <= 0 || p.inner <= 0) return "swiglu: rows and inner must be positive";
  if (p.in_row_stride < p.inner) return "swiglu: in_row_stride must be at least inner";
  if (!cuda && p.dtype != DType::F32) return "swiglu: the CPU reference takes float32 only";
  return "";
}

void swiglu_cpu(const SwiGluParams& p) {
  if (*check_swiglu_params(p, false)) return;
  const auto* gate = static_cast<const float*>(p.gate);
  const auto* up = static_cast<const float*>(p.up);
  auto* out = static_cast<float*>(p.out);
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t i = 0; i < p.inner; ++i) {
      const double g = gate[r * p.in_row_stride + i];
      out[r * p.inner + i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[r * p.in_row_stride + i]);
    }
}

}  // namespace rtp::kernels
