// Plain-loop CPU reference of gemv.h (double sums) and the parameter check shared with CUDA.
#include "rtp/kernels/gemv.h"

#include <cmath>

namespace rtp::kernels {

const char* check_gemv_params(const GemvParams& p, bool cuda) {
  if (!p.x || !p.weight || !p.out) return "gemv: a tensor pointer is null";
  if (p.rows <= 0 || p.rows > kGemvMaxRows) return "gemv: rows must be in [1, 4]";
  if (p.m <= 0 || p.k <= 0 || p.x_row_stride < p.k) return "gemv: m and k must be positive, x_row_stride at least k";
  if (!cuda && p.dtype != DType::F32) return "gemv: the CPU reference takes float32 only";
  if (p.has_epilogue() && !(p.residual && p.norm_weight && p.sum_out && p.normed_out && p.done))
    return "gemv: the add + RMSNorm epilogue needs residual, norm_weight, sum_out, normed_out and done, all of them";
  if (p.has_epilogue() && !(p.eps >= 0.f)) return "gemv: the epilogue's eps must be >= 0";
  if (p.has_epilogue() && p.layout == GemvLayout::WholeRows)
    return "gemv: the add + RMSNorm epilogue runs with the SplitRows layout (or Auto), not WholeRows";
  return "";
}

GemvLayout resolved_layout(const GemvParams& p) {
  if (p.layout != GemvLayout::Auto) return p.layout;
  return p.m >= kGemvWholeRowsMinM && p.k <= p.m && !p.has_epilogue() ? GemvLayout::WholeRows : GemvLayout::SplitRows;
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
  if (!p.has_epilogue()) return;
  const auto* res = static_cast<const float*>(p.residual);
  const auto* nw = static_cast<const float*>(p.norm_weight);
  auto* sum = static_cast<float*>(p.sum_out);
  auto* normed = static_cast<float*>(p.normed_out);
  for (int64_t n = 0; n < p.rows; ++n) {
    double ss = 0;
    for (int64_t m = 0; m < p.m; ++m) {
      sum[n * p.m + m] = out[n * p.m + m] + res[n * p.m + m];
      ss += static_cast<double>(sum[n * p.m + m]) * sum[n * p.m + m];
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(p.m) + p.eps);
    for (int64_t m = 0; m < p.m; ++m) normed[n * p.m + m] = static_cast<float>(nw[m] * (sum[n * p.m + m] * r));
  }
}

}  // namespace rtp::kernels
