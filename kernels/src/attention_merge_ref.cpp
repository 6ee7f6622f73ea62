// Plain-loop CPU reference of attention_merge.h (double arithmetic) and the parameter checks shared with CUDA.
#include <cmath>
#include <cstdint>

#include "rtp/kernels/attention_merge.h"

namespace rtp::kernels {

const char* check_attention_merge_params(const AttentionMergeParams& p, bool cuda) {
  if (!p.a || !p.b || !p.out || !p.lse_a || !p.lse_b) return "attention_merge: a pointer is null";
  if (p.batch <= 0 || p.heads <= 0 || p.tokens <= 0 || p.head_dim <= 0)
    return "attention_merge: batch, heads, tokens and head_dim must be positive";
  if (!cuda && p.dtype != DType::F32) return "attention_merge: the CPU reference takes float32 only";
  if (cuda && !attention_merge_cuda_takes(p))
    return "attention_merge: the CUDA kernel needs head_dim and the row strides of a, b and out in 16-byte multiples and "
           "16-byte aligned a, b and out";
  return "";
}

bool attention_merge_cuda_takes(const AttentionMergeParams& p) {
  const int64_t vec = p.dtype == DType::BF16 ? 8 : 4;
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  for (const int64_t* s : {p.a_stride, p.b_stride, p.out_stride})
    for (int k = 0; k < 3; ++k)
      if (s[k] % vec != 0) return false;
  return p.head_dim % vec == 0 && aligned(p.a) && aligned(p.b) && aligned(p.out);
}

void attention_merge_cpu(const AttentionMergeParams& p) {
  if (*check_attention_merge_params(p, false)) return;
  const auto* a = static_cast<const float*>(p.a);
  const auto* b = static_cast<const float*>(p.b);
  auto* out = static_cast<float*>(p.out);
  const auto at = [](const int64_t* s, int64_t i, int64_t h, int64_t t) { return i * s[0] + h * s[1] + t * s[2]; };
  for (int64_t i = 0; i < p.batch; ++i)
    for (int64_t h = 0; h < p.heads; ++h)
      for (int64_t t = 0; t < p.tokens; ++t) {
        const double la = p.lse_a[at(p.lse_a_stride, i, h, t)], lb = p.lse_b[at(p.lse_b_stride, i, h, t)];
        const double s = 1.0 / (1.0 + std::exp(lb - la));
        for (int64_t d = 0; d < p.head_dim; ++d)
          out[at(p.out_stride, i, h, t) + d] =
              static_cast<float>(s * a[at(p.a_stride, i, h, t) + d] + (1.0 - s) * b[at(p.b_stride, i, h, t) + d]);
      }
}

}  // namespace rtp::kernels
