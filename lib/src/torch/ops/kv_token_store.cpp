#include "rtp/ops/kv_token_store.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/kv_token_store.h"
#include "device_launch.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool kv_token_store_supported(const torch::Tensor& k_cache, const torch::Tensor& v_cache, const torch::Tensor& kt,
                              const torch::Tensor& vt, const torch::Tensor& position) {
  const auto dev = k_cache.device();
  const auto row_ok = [&](const torch::Tensor& t) {
    return t.dim() == 4 && t.size(0) == k_cache.size(0) && t.size(1) == k_cache.size(1) && t.size(2) == 1 &&
           t.size(3) == k_cache.size(3) && t.stride(3) == 1 && t.scalar_type() == k_cache.scalar_type() &&
           t.device() == dev;
  };
  const int64_t e = k_cache.defined() ? static_cast<int64_t>(k_cache.element_size()) : 0;
  return k_cache.defined() && v_cache.defined() && k_cache.dim() == 4 && k_cache.is_contiguous() &&
         v_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes() && v_cache.scalar_type() == k_cache.scalar_type() &&
         v_cache.device() == dev && (e == 2 || e == 4) && row_ok(kt) && row_ok(vt) &&
         position.scalar_type() == torch::kInt64 && position.numel() == 1 && position.device() == dev &&
         (dev.is_cpu() || k::built_with_cuda());
}

void kv_token_store(torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& kt, const torch::Tensor& vt,
                    const torch::Tensor& position) {
  RTP_CHECK(kv_token_store_supported(k_cache, v_cache, kt, vt, position),
            "kv_token_store: expected contiguous caches [B, H, capacity, D] and k, v [B, H, 1, D] of their dtype on their ",
            "device with an int64 position there, found caches ", k_cache.sizes(), ", k ", kt.sizes(), ", v ", vt.sizes());
  k::KvTokenStoreParams p;
  p.k = kt.data_ptr(), p.v = vt.data_ptr();
  p.k_batch_stride = kt.stride(0), p.k_head_stride = kt.stride(1);
  p.v_batch_stride = vt.stride(0), p.v_head_stride = vt.stride(1);
  p.k_cache = k_cache.data_ptr(), p.v_cache = v_cache.data_ptr();
  p.batch = k_cache.size(0), p.heads = k_cache.size(1), p.capacity = k_cache.size(2), p.head_dim = k_cache.size(3);
  p.element_bytes = static_cast<int>(k_cache.element_size());
  p.position = position.data_ptr<int64_t>();
  const char* err = k::check_kv_token_store_params(p);
  RTP_CHECK(!*err, err);
  if (k_cache.is_cpu()) {
    k::kv_token_store_cpu(p);
    return;
  }
#ifdef RTPURBO_WITH_CUDA
  const DeviceLaunch launch(k_cache.device());
  const cudaError_t e = k::kv_token_store_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "kv_token_store: CUDA kernel failed: ", cudaGetErrorString(e));
#else
  RTP_THROW("kv_token_store: a CUDA tensor was given but this build has no CUDA kernels");
#endif
}

}  // namespace rtp::ops
