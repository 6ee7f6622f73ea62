// Plain-loop CPU reference of gemv.h (double sums) and the parameter check shared with CUDA.
#include "rtp/kernels/gemv.h"

#include <cmath>

#include "add_norm_ref.h"
#include "rtp/kernels/moe_router.h"

namespace rtp::kernels {

const char* check_gemv_params(const GemvParams& p, bool cuda) {
  if (!p.x || !p.weight || !p.out) return "gemv: a tensor pointer is null";
  if (p.rows <= 0 || p.rows > kGemvMaxRows) return "gemv: rows must be in [1, 4]";
  if (p.m <= 0 || p.k <= 0 || p.x_row_stride < p.k) return "gemv: m and k must be positive, x_row_stride at least k";
  if (!cuda && p.dtype != DType::F32) return "gemv: the CPU reference takes float32 only";
  if (p.has_add_norm() && !(p.residual && p.norm_weight && p.sum_out && p.normed_out && p.done))
    return "gemv: the add + RMSNorm epilogue needs residual, norm_weight, sum_out, normed_out and done, all of them";
  if (p.has_add_norm() && !(p.eps >= 0.f)) return "gemv: the epilogue's eps must be >= 0";
  if (p.has_add_norm() && p.layout == GemvLayout::WholeRows)
    return "gemv: the add + RMSNorm epilogue runs with the SplitRows layout (or Auto), not WholeRows";
  if (p.out_float32 && (p.has_add_norm() || p.head_norm_rope.active() || p.moe_route.active() || p.swiglu))
    return "gemv: a float32 output (out_float32) takes no epilogue: the epilogues read out in the element type";
  if (int(p.has_add_norm()) + int(p.head_norm_rope.active()) + int(p.moe_route.active()) + int(p.swiglu) > 1)
    return "gemv: at most one epilogue per launch (add + RMSNorm, head norm + RoPE, MoE routing, SwiGLU)";
  if (p.swiglu && p.m % 2 != 0) return "gemv: SwiGLU needs m even (the gate rows, then as many up rows)";
  if (p.swiglu && p.layout == GemvLayout::SplitRows)
    return "gemv: SwiGLU runs with the WholeRows layout (or Auto), not SplitRows";
  if (const auto& h = p.head_norm_rope; h.active()) {
    if (!h.q_weight || !h.k_weight || !h.cos || !h.sin || !h.q_normed || !h.q_roped || !h.k_normed || !h.k_roped)
      return "gemv: the head norm + RoPE epilogue needs q/k norm weights, cos, sin and the four outputs, all of them";
    if (h.q_heads <= 0 || h.k_heads <= 0 || h.head_dim <= 0 || h.head_dim % 2 != 0 || h.seq_len <= 0)
      return "gemv: head norm + RoPE needs q_heads, k_heads and seq_len positive and head_dim positive and even";
    if ((h.q_heads + h.k_heads) * h.head_dim > p.m)
      return "gemv: head norm + RoPE: (q_heads + k_heads) x head_dim must not exceed m";
    if (p.rows % h.seq_len != 0) return "gemv: head norm + RoPE: rows must be a multiple of seq_len";
    if (!(h.eps >= 0.f)) return "gemv: the head norm's eps must be >= 0";
    if (h.stores_token()) {
      if (!h.k_cache || !h.v_cache || !h.position)
        return "gemv: the token store needs k_cache, v_cache and position, all of them";
      if (h.seq_len != 1 || h.capacity <= 0)
        return "gemv: the token store takes one token per sequence (seq_len 1) and a positive capacity";
      if ((h.q_heads + 2 * h.k_heads) * h.head_dim > p.m)
        return "gemv: the token store: (q_heads + 2 k_heads) x head_dim (q, k and v) must not exceed m";
    }
    // A block's rows belong to one head: 2 rows per block (split) or 16 (whole rows); half a head per thread pair.
    if (cuda && (h.head_dim % kGemvEpilogueHeadDimMultiple != 0 || h.head_dim > kGemvEpilogueMaxHeadDim))
      return "gemv: the CUDA head norm + RoPE epilogue takes head_dim a multiple of 16, at most 512";
  }
  if (const auto& r = p.moe_route; r.active()) {
    if (!r.expert || !r.weight) return "gemv: the MoE routing epilogue needs expert and weight";
    if (r.top_k <= 0 || r.top_k > p.m) return "gemv: the MoE routing epilogue needs top_k in [1, m]";
    if (cuda && (p.m > kMoeRouterMaxExperts || r.top_k > kMoeRouterMaxTopK))
      return "gemv: the CUDA MoE routing epilogue takes at most 512 experts and top_k 32";
  }
  return "";
}

GemvLayout resolved_layout(const GemvParams& p) {
  if (p.layout != GemvLayout::Auto) return p.layout;
  if (p.swiglu) return GemvLayout::WholeRows;
  return p.m >= kGemvWholeRowsMinM && p.k <= p.m && !p.has_add_norm() ? GemvLayout::WholeRows : GemvLayout::SplitRows;
}

void gemv_cpu(const GemvParams& p) {
  if (*check_gemv_params(p, false)) return;
  const auto* x = static_cast<const float*>(p.x);
  const auto* w = static_cast<const float*>(p.weight);
  auto* out = static_cast<float*>(p.out);
  const auto dot = [&](int64_t n, int64_t m) {
    double s = 0;
    for (int64_t k = 0; k < p.k; ++k) s += static_cast<double>(x[n * p.x_row_stride + k]) * w[m * p.k + k];
    return s;
  };
  if (p.swiglu) {
    const int64_t half = p.m / 2;
    for (int64_t n = 0; n < p.rows; ++n)
      for (int64_t m = 0; m < half; ++m) {
        const double g = dot(n, m), u = dot(n, half + m);
        out[n * half + m] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
      }
    return;
  }
  for (int64_t n = 0; n < p.rows; ++n)
    for (int64_t m = 0; m < p.m; ++m) out[n * p.m + m] = static_cast<float>(dot(n, m));
  if (const auto& h = p.head_norm_rope; h.active()) {
    const auto* c = h.cos;
    const auto* sn = h.sin;
    const int64_t D = h.head_dim, half = D / 2;
    for (int64_t n = 0; n < p.rows; ++n)
      for (int64_t g = 0; g < h.q_heads + h.k_heads; ++g) {
        const bool is_q = g < h.q_heads;
        const int64_t head = is_q ? g : g - h.q_heads, heads = is_q ? h.q_heads : h.k_heads;
        const float* x = out + n * p.m + g * D;
        const auto* w = static_cast<const float*>(is_q ? h.q_weight : h.k_weight);
        auto* normed = static_cast<float*>(is_q ? h.q_normed : h.k_normed) + (n * heads + head) * D;
        auto* roped = static_cast<float*>(is_q ? h.q_roped : h.k_roped) + (n * heads + head) * D;
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(x[i]) * x[i];
        const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + h.eps);
        const int64_t t = n % h.seq_len;
        for (int64_t i = 0; i < D; ++i) {
          const double v = w[i] * (x[i] * r);
          const int64_t j = i < half ? i + half : i - half;
          const double partner = w[j] * (x[j] * r);
          normed[i] = static_cast<float>(v);
          roped[i] = static_cast<float>(v * c[t * D + i] + (i < half ? -partner : partner) * sn[t * D + i]);
        }
      }
    const int64_t slot = h.stores_token() ? *h.position : -1;
    if (slot >= 0 && slot < h.capacity)
      for (int64_t n = 0; n < p.rows; ++n)
        for (int64_t head = 0; head < h.k_heads; ++head) {
          const int64_t at = ((n * h.k_heads + head) * h.capacity + slot) * D;
          const float* k = static_cast<const float*>(h.k_roped) + (n * h.k_heads + head) * D;
          const float* v = out + n * p.m + (h.q_heads + h.k_heads + head) * D;
          for (int64_t i = 0; i < D; ++i) {
            static_cast<float*>(h.k_cache)[at + i] = k[i];
            static_cast<float*>(h.v_cache)[at + i] = v[i];
          }
        }
  }
  if (const auto& r = p.moe_route; r.active()) {
    MoeRouterParams rp;
    rp.logits = out, rp.expert = r.expert, rp.weight = r.weight;
    rp.tokens = p.rows, rp.experts = p.m, rp.top_k = r.top_k;
    rp.norm_topk_prob = r.norm_topk_prob;
    moe_router_cpu(rp);
  }
  if (!p.has_add_norm()) return;
  ref_detail::add_rms_norm_rows_cpu(out, static_cast<const float*>(p.residual), static_cast<const float*>(p.norm_weight),
                                    static_cast<float*>(p.sum_out), static_cast<float*>(p.normed_out), p.rows, p.m,
                                    p.eps);
}

}  // namespace rtp::kernels
