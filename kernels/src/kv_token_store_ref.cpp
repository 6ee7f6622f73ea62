// Plain-loop CPU reference of kv_token_store.h and the parameter check shared with CUDA.
#include <cstring>

#include "rtp/kernels/kv_token_store.h"

namespace rtp::kernels {

const char* check_kv_token_store_params(const KvTokenStoreParams& p) {
  if (!p.k || !p.v || !p.k_cache || !p.v_cache || !p.position) return "kv token store: a pointer is null";
  if (p.batch <= 0 || p.heads <= 0 || p.capacity <= 0 || p.head_dim <= 0)
    return "kv token store: batch, heads, capacity and head_dim must be positive";
  if (p.element_bytes != 2 && p.element_bytes != 4) return "kv token store: element_bytes must be 2 or 4";
  return "";
}

void kv_token_store_cpu(const KvTokenStoreParams& p) {
  if (*check_kv_token_store_params(p)) return;
  const int64_t pos = *p.position, e = p.element_bytes, row = p.head_dim * e;
  if (pos < 0 || pos >= p.capacity) return;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t dst = ((b * p.heads + h) * p.capacity + pos) * row;
      std::memcpy(static_cast<char*>(p.k_cache) + dst,
                  static_cast<const char*>(p.k) + (b * p.k_batch_stride + h * p.k_head_stride) * e, row);
      std::memcpy(static_cast<char*>(p.v_cache) + dst,
                  static_cast<const char*>(p.v) + (b * p.v_batch_stride + h * p.v_head_stride) * e, row);
    }
}

}  // namespace rtp::kernels
