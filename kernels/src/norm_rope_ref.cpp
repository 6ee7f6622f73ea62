// Plain-loop CPU reference of norm_rope.h (double arithmetic) and the parameter check shared with CUDA.
#include <cmath>
#include <vector>

#include "rtp/kernels/norm_rope.h"

namespace rtp::kernels {

const char* check_rms_norm_params(const RmsNormParams& p, bool cuda) {
  if (!p.x || !p.weight || !p.out) return "rms norm: a tensor pointer is null";
  if (p.rows <= 0 || p.dim <= 0) return "rms norm: rows and dim must be positive";
  if (!cuda && p.dtype != DType::F32) return "rms norm: the CPU reference takes float32 only";
  const bool rope = p.cos || p.sin || p.rope_out;
  if (rope) {
    if (!p.cos || !p.sin || !p.rope_out) return "rms norm: RoPE needs cos, sin and rope_out together";
    if (p.dim % 2 != 0) return "rms norm: RoPE needs an even dim";
    if (p.heads <= 0 || p.seq_len <= 0 || p.rows % (p.heads * p.seq_len) != 0)
      return "rms norm: with RoPE, rows must be batch x seq_len x heads";
  }
  if (!p.residual != !p.sum_out) return "rms norm: a residual add needs residual and sum_out together";
  if (p.residual && (rope || p.x_token_stride != 0)) return "rms norm: a residual add takes contiguous x and no RoPE";
  if (p.heads <= 0 || p.rows % p.heads != 0) return "rms norm: rows must be a multiple of heads";
  if (p.x_token_stride != 0 && p.x_token_stride < p.heads * p.dim)
    return "rms norm: x_token_stride must be 0 or at least heads x dim";
  return "";
}

void rms_norm_cpu(const RmsNormParams& p) {
  if (*check_rms_norm_params(p, false)) return;
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  auto* out = static_cast<float*>(p.out);
  auto* rope = static_cast<float*>(p.rope_out);
  const int64_t D = p.dim, half = D / 2;
  std::vector<double> n(static_cast<size_t>(D));
  for (int64_t row = 0; row < p.rows; ++row) {
    const int64_t stride = p.x_token_stride ? p.x_token_stride : p.heads * D;
    const float* xr = x + (row / p.heads) * stride + (row % p.heads) * D;
    if (p.residual) {
      // The sum is the layer's new residual stream: stored as float, normalised from the stored values.
      float* sum = static_cast<float*>(p.sum_out) + row * D;
      const float* res = static_cast<const float*>(p.residual) + row * D;
      for (int64_t i = 0; i < D; ++i) sum[i] = static_cast<float>(static_cast<double>(xr[i]) + res[i]);
      xr = sum;
    }
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + p.eps);
    for (int64_t i = 0; i < D; ++i) {
      n[static_cast<size_t>(i)] = static_cast<double>(w[i]) * (xr[i] * r);
      out[row * D + i] = static_cast<float>(n[static_cast<size_t>(i)]);
    }
    if (!p.cos) continue;
    const int64_t t = (row / p.heads) % p.seq_len;
    for (int64_t i = 0; i < D; ++i) {
      const double rotated = i < half ? -n[static_cast<size_t>(i + half)] : n[static_cast<size_t>(i - half)];
      rope[row * D + i] = static_cast<float>(n[static_cast<size_t>(i)] * p.cos[t * D + i] + rotated * p.sin[t * D + i]);
    }
  }
}

}  // namespace rtp::kernels
