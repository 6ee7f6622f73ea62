#pragma once
// The CPU reference of the add + RMSNorm epilogue (gemv.h, moe_decode.h): per row sum = out + residual in float32,
// the norm in double.
#include <cmath>
#include <cstdint>

namespace rtp::kernels::ref_detail {

inline void add_rms_norm_rows_cpu(const float* out, const float* residual, const float* norm_weight, float* sum,
                                  float* normed, int64_t rows, int64_t m, float eps) {
  for (int64_t n = 0; n < rows; ++n) {
    double ss = 0;
    for (int64_t i = 0; i < m; ++i) {
      sum[n * m + i] = out[n * m + i] + residual[n * m + i];
      ss += static_cast<double>(sum[n * m + i]) * sum[n * m + i];
    }
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(m) + eps);
    for (int64_t i = 0; i < m; ++i) normed[n * m + i] = static_cast<float>(norm_weight[i] * (sum[n * m + i] * r));
  }
}

}  // namespace rtp::kernels::ref_detail
