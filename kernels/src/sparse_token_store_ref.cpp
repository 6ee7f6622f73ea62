// Plain-loop CPU reference of sparse_token_store.h (double sums) and the parameter check shared with CUDA.
#include <vector>

#include "rtp/kernels/sparse_token_store.h"

namespace rtp::kernels {

const char* check_sparse_token_store_params(const SparseTokenStoreParams& p, bool cuda) {
  if (p.kv_heads <= 0 || p.kv_heads > kTokenStoreMaxKvHeads) return "sparse token store: kv_heads must be in [1, 32]";
  if (p.group_size <= 0 || p.head_dim <= 0) return "sparse token store: group_size and head_dim must be positive";
  if (!p.k || !p.v || !p.position) return "sparse token store: k, v and position are required";
  if (!cuda && (p.dtype != DType::F32 || p.index_dtype != DType::F32))
    return "sparse token store: the CPU reference takes float32 only";
  int n_ret = 0, n_str = 0;
  uint32_t ret_seen = 0, str_seen = 0;
  for (int g = 0; g < p.kv_heads; ++g) {
    const int r = p.retrieval_slot_of[g], s = p.streaming_slot_of[g];
    if ((r >= 0) == (s >= 0)) return "sparse token store: every KV head needs exactly one of a retrieval and a streaming slot";
    if (r >= 0) {
      if (r >= p.kv_heads || (ret_seen >> r & 1u)) return "sparse token store: retrieval slots must be distinct";
      ret_seen |= 1u << r, ++n_ret;
    } else {
      if (s >= p.kv_heads || (str_seen >> s & 1u)) return "sparse token store: streaming slots must be distinct";
      str_seen |= 1u << s, ++n_str;
    }
  }
  if (ret_seen != (n_ret == 32 ? ~0u : (1u << n_ret) - 1u) || str_seen != (n_str == 32 ? ~0u : (1u << n_str) - 1u))
    return "sparse token store: slots must be numbered 0.. without gaps";
  if (n_ret > 0 && (!p.full_k || !p.full_v || !p.index_keys || !p.index_k_weight || !p.index_q_weight ||
                    !p.index_q_out || !p.index_k_src || !p.index_q_src || p.index_dim <= 0 || p.full_capacity <= 0))
    return "sparse token store: retrieval heads need the full caches, index keys, indexer weights and sources";
  if (n_str > 0 && (!p.ring_k || !p.ring_v || !p.ring_slot || p.ring_capacity <= 0))
    return "sparse token store: streaming heads need the ring caches and ring_slot";
  return "";
}

void sparse_token_store_cpu(const SparseTokenStoreParams& p) {
  if (*check_sparse_token_store_params(p, false)) return;
  const int64_t D = p.head_dim, I = p.index_dim, G = p.group_size, pos = *p.position;
  const auto* k = static_cast<const float*>(p.k);
  const auto* v = static_cast<const float*>(p.v);
  const auto copy_row = [D](const float* src, float* dst) {
    for (int64_t d = 0; d < D; ++d) dst[d] = src[d];
  };
  const auto dot = [D](const float* a, const float* b) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(a[d]) * b[d];
    return static_cast<float>(s);
  };
  for (int64_t g = 0; g < p.kv_heads; ++g) {
    const float* kg = k + g * p.k_head_stride;
    const float* vg = v + g * p.v_head_stride;
    if (const int64_t s = p.streaming_slot_of[g]; s >= 0) {
      const int64_t row = s * p.ring_capacity + *p.ring_slot;
      copy_row(kg, static_cast<float*>(p.ring_k) + row * D);
      copy_row(vg, static_cast<float*>(p.ring_v) + row * D);
      continue;
    }
    const int64_t r = p.retrieval_slot_of[g];
    const int64_t row = r * p.full_capacity + pos;
    copy_row(kg, static_cast<float*>(p.full_k) + row * D);
    copy_row(vg, static_cast<float*>(p.full_v) + row * D);
    const float* ksrc = static_cast<const float*>(p.index_k_src) + g * p.index_k_src_head_stride;
    const float* kw = static_cast<const float*>(p.index_k_weight) + r * I * D;
    for (int64_t i = 0; i < I; ++i) static_cast<float*>(p.index_keys)[row * I + i] = dot(kw + i * D, ksrc);
    for (int64_t j = 0; j < G; ++j) {
      const float* qsrc = static_cast<const float*>(p.index_q_src) + (g * G + j) * p.index_q_src_head_stride;
      const float* qw = static_cast<const float*>(p.index_q_weight) + (r * G + j) * I * D;
      for (int64_t i = 0; i < I; ++i) static_cast<float*>(p.index_q_out)[(r * G + j) * I + i] = dot(qw + i * D, qsrc);
    }
  }
}

}  // namespace rtp::kernels
