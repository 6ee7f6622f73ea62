// The MoE router's softmax and top-k (moe_router.h): one warp per token (moe_router_warp.cuh).
#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "moe_router_warp.cuh"
#include "rtp/kernels/moe_router.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kWarps = 4;

// kSlots = ceil(experts / 32) rounded up to a power of two (4 for 128 experts): each top-k round scans only those.
template <typename T, int kSlots>
__global__ void __launch_bounds__(kWarps * 32) moe_router_kernel(const MoeRouterParams p) {
  pdl_wait_then_trigger();
  const int64_t n = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= p.tokens) return;
  const int E = int(p.experts), K = int(p.top_k);
  const T* l = static_cast<const T*>(p.logits) + n * E;
  route_token_in_warp<T, kSlots>([&](int e) { return to_float(l[e]); }, E, K, p.norm_topk_prob, p.expert + n * K,
                                 static_cast<T*>(p.weight) + n * K);
}

template <typename T>
cudaError_t launch(const MoeRouterParams& p, cudaStream_t stream) {
  static_assert(kMoeRouterMaxExperts == 16 * 32, "the slot counts below cover up to 16 x 32 experts");
  const unsigned blocks = unsigned((p.tokens + kWarps - 1) / kWarps);
  auto kern = p.experts <= 32    ? moe_router_kernel<T, 1>
              : p.experts <= 64  ? moe_router_kernel<T, 2>
              : p.experts <= 128 ? moe_router_kernel<T, 4>
              : p.experts <= 256 ? moe_router_kernel<T, 8>
                                 : moe_router_kernel<T, 16>;
  return launch_k(kern, dim3(blocks), dim3(kWarps * 32), 0, stream, programmatic_launch_available(), p);
}

}  // namespace

cudaError_t moe_router_cuda(const MoeRouterParams& p, cudaStream_t stream) {
  if (*check_moe_router_params(p, true)) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
