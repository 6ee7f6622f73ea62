#include "rtp/ops/moe_router.h"

#include <torch/torch.h>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/moe_router.h"
#include "device_launch.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool fused_moe_route_supported(const torch::Tensor& logits, int64_t top_k) {
  const auto dt = logits.scalar_type();
  return logits.is_cuda() && !detail::backward_needed(logits) && k::built_with_cuda() && logits.dim() == 2 && logits.size(0) > 0 &&
         (dt == torch::kBFloat16 || dt == torch::kFloat32) && logits.size(1) <= k::kMoeRouterMaxExperts &&
         top_k >= 1 && top_k <= std::min<int64_t>(logits.size(1), k::kMoeRouterMaxTopK);
}

std::pair<torch::Tensor, torch::Tensor> moe_route(const torch::Tensor& logits, int64_t top_k, bool norm_topk_prob) {
  RTP_CHECK(logits.dim() == 2 && top_k >= 1 && top_k <= logits.size(1), "moe_route: logits must be [N, E] with ",
            "top_k in [1, E], found ", logits.sizes(), " and top_k ", top_k);
  if (!fused_moe_route_supported(logits, top_k)) {
    // As HF: softmax in float32, top-k, renormalise, back to the logits' dtype.
    auto probs = torch::softmax(logits, -1, torch::kFloat32);
    auto [w, e] = torch::topk(probs, top_k, -1);
    if (norm_topk_prob) w = w / w.sum(-1, true);
    return {e, w.to(logits.scalar_type())};
  }
#ifdef RTPURBO_WITH_CUDA
  const auto lc = logits.contiguous();
  const int64_t N = lc.size(0);
  auto expert = torch::empty({N, top_k}, lc.options().dtype(torch::kInt64));
  auto weight = torch::empty({N, top_k}, lc.options());
  k::MoeRouterParams p;
  p.logits = lc.data_ptr();
  p.expert = expert.data_ptr<int64_t>();
  p.weight = weight.data_ptr();
  p.tokens = N, p.experts = lc.size(1), p.top_k = top_k;
  p.norm_topk_prob = norm_topk_prob;
  p.dtype = lc.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  const char* err = k::check_moe_router_params(p, true);
  RTP_CHECK(!*err, err);
  const DeviceLaunch launch(lc.device());
  const cudaError_t e = k::moe_router_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "moe_route: CUDA kernel failed: ", cudaGetErrorString(e));
  return {expert, weight};
#else
  RTP_THROW("moe_route: internal: the kernel path in a build without CUDA");
#endif
}

}  // namespace rtp::ops
