// Plain-loop CPU reference of moe_decode.h (double arithmetic), and the parameter check shared with CUDA.
#include <cmath>
#include <vector>

#include "add_norm_ref.h"
#include "rtp/kernels/moe_decode.h"

namespace rtp::kernels {

const char* check_moe_decode_launch_shape(const MoeDecodeLaunchShape& shape) {
  const int rows = shape.gate_up_rows_per_warp, warps = shape.down_warps_per_block;
  if (rows != 1 && rows != 2 && rows != 4) return "moe decode: gate_up_rows_per_warp must be 1, 2 or 4";
  if (warps != 4 && warps != 8) return "moe decode: down_warps_per_block must be 4 or 8";
  if (shape.one_launch && (warps != 8 || rows == 4))
    return "moe decode: one_launch takes 8 down warps per block and 1 or 2 gate/up rows per warp";
  return "";
}

const char* check_moe_decode_params(const MoeDecodeParams& p, bool cuda) {
  if (!p.x || !p.expert || !p.weight || !p.gate_up || !p.down || !p.out) return "moe decode: a tensor pointer is null";
  if (p.tokens <= 0 || p.top_k <= 0 || p.experts <= 0 || p.hidden <= 0 || p.intermediate <= 0)
    return "moe decode: tokens, top_k, experts, hidden and intermediate must be positive";
  if (p.top_k > p.experts) return "moe decode: top_k exceeds the number of experts";
  if (!cuda && p.dtype != DType::F32) return "moe decode: the CPU reference takes float32 only";
  if (cuda && !p.act) return "moe decode: the CUDA kernels need the act workspace [tokens, top_k, intermediate]";
  if (cuda && p.tokens * p.top_k > 65535) return "moe decode: tokens x top_k above 65535 (one grid row per slot)";
  if (cuda && p.dtype != DType::F32 && p.dtype != DType::BF16) return "moe decode: dtype must be float32 or bfloat16";
  if (p.has_add_norm() && !(p.residual && p.norm_weight && p.sum_out && p.normed_out && p.done))
    return "moe decode: the add + RMSNorm epilogue needs residual, norm_weight, sum_out, normed_out and done, all of them";
  if (cuda && p.shape.one_launch && !p.done) return "moe decode: one_launch needs three counts in done";
  if (!p.has_add_norm() && !p.shape.one_launch && p.done)
    return "moe decode: done is set without the add + RMSNorm epilogue or one_launch (what would it count?)";
  return check_moe_decode_launch_shape(p.shape);
}

void moe_decode_cpu(const MoeDecodeParams& p) {
  if (*check_moe_decode_params(p, false)) return;
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  const auto* gu = static_cast<const float*>(p.gate_up);
  const auto* dn = static_cast<const float*>(p.down);
  auto* out = static_cast<float*>(p.out);
  const int64_t H = p.hidden, I = p.intermediate;
  std::vector<double> a(static_cast<size_t>(I));
  for (int64_t n = 0; n < p.tokens; ++n) {
    std::vector<double> acc(static_cast<size_t>(H), 0.0);
    for (int64_t s = 0; s < p.top_k; ++s) {
      const int64_t e = p.expert[n * p.top_k + s];
      const double ws = w[n * p.top_k + s];
      if (e < 0 || e >= p.experts) continue;
      const float* ge = gu + e * 2 * I * H;
      for (int64_t r = 0; r < I; ++r) {
        double g = 0, u = 0;
        for (int64_t h = 0; h < H; ++h) {
          g += static_cast<double>(ge[r * H + h]) * x[n * H + h];
          u += static_cast<double>(ge[(I + r) * H + h]) * x[n * H + h];
        }
        a[static_cast<size_t>(r)] = g / (1.0 + std::exp(-g)) * u;
      }
      const float* de = dn + e * H * I;
      for (int64_t h = 0; h < H; ++h) {
        double y = 0;
        for (int64_t r = 0; r < I; ++r) y += static_cast<double>(de[h * I + r]) * a[static_cast<size_t>(r)];
        acc[static_cast<size_t>(h)] += ws * y;
      }
    }
    for (int64_t h = 0; h < H; ++h) out[n * H + h] = static_cast<float>(acc[static_cast<size_t>(h)]);
  }
  if (p.has_add_norm())
    ref_detail::add_rms_norm_rows_cpu(out, static_cast<const float*>(p.residual),
                                      static_cast<const float*>(p.norm_weight), static_cast<float*>(p.sum_out),
                                      static_cast<float*>(p.normed_out), p.tokens, H, p.eps);
}

}  // namespace rtp::kernels
