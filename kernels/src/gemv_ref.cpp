// Plain-loop CPU reference of gemv.h (double sums) and the parameter check shared with CUDA.
#include "rtp/kernels/gemv.h"

namespace rtp::kernels {

const char* check_gemv_params(const GemvParams& p, bool cuda) {
  if (!p.x || !p.weight || !p.out) return "gemv: a tensor pointer is null";
  if (p.rows <= 0 || p.rows > kGemvMaxRows) return "gemv: rows must be in [1, 4]";
  if (p.m <= 0 || p.k <= 0 || p.x_row_stride < p.k) return "gemv: m and k must be positive, x_row_stride at least k";
  if (!cuda && p.dtype != DType::F32) return "gemv: the CPU reference takes float32 only";
  return "";
}

void gemv_cpu(const GemvParams& p) {
  if (*check_gemv_params(p, false)) return;
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  auto* out = static_cast<float*>(p.out);
  for (int64_t n = 0; n < p.rows; ++n)
    for (int64_t m = 0; m < p.m; ++m) {
      double s = 0;
      for (int64_t k = 0; k < p.k; ++k) s += static_cast<double>(x[n * p.x_row_stride + k]) * w[m * p.k + k];
      out[n * p.m + m] = static_cast<float>(s);
    }
}

}  // namespace rtp::kernels
