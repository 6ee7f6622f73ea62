#include "rtp/ops/attention_merge.h"

#include <torch/torch.h>

#include "backward_needed.h"
#include "device_launch.h"
#include "rtp/core/error.h"
#include "rtp/kernels/attention_merge.h"
#include "rtp/kernels/build_info.h"

namespace rtp::ops {
namespace k = rtp::kernels;

namespace {

// [B, H, T] float32 view of a log-sum-exp given as [B, H, T] or [B, H, T, 1].
torch::Tensor lse_rows(const torch::Tensor& lse, const torch::Tensor& out, const char* name) {
  const bool fits = (lse.dim() == 3 || (lse.dim() == 4 && lse.size(3) == 1)) && lse.size(0) == out.size(0) &&
                    lse.size(1) == out.size(1) && lse.size(2) == out.size(2);
  RTP_CHECK(fits, "attention_merge: ", name, " must be [B, H, T] or [B, H, T, 1] for outputs ", out.sizes(), ", found ",
            lse.sizes());
  const auto rows = lse.dim() == 4 ? lse.select(3, 0) : lse;
  return rows.scalar_type() == torch::kFloat32 ? rows : rows.to(torch::kFloat32);
}

void copy_strides(int64_t (&dst)[3], const torch::Tensor& t) {
  for (int k = 0; k < 3; ++k) dst[k] = t.stride(k);
}

}  // namespace

torch::Tensor attention_merge(const torch::Tensor& a, const torch::Tensor& lse_a, const torch::Tensor& b,
                              const torch::Tensor& lse_b) {
  RTP_CHECK(a.dim() == 4 && a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && a.device() == b.device(),
            "attention_merge: outputs must be [B, H, T, D] of one shape, dtype and device, found ", a.sizes(), " ",
            a.scalar_type(), " and ", b.sizes(), " ", b.scalar_type());
  const auto la = lse_rows(lse_a, a, "lse_a"), lb = lse_rows(lse_b, b, "lse_b");
  const auto dt = a.scalar_type();
  const bool kernel = a.is_cuda() && k::built_with_cuda() && (dt == torch::kBFloat16 || dt == torch::kFloat32) &&
                      a.numel() > 0 && a.stride(3) == 1 && b.stride(3) == 1 && la.device() == a.device() &&
                      lb.device() == a.device() && !detail::backward_needed(a, b, la, lb);
#ifdef RTPURBO_WITH_CUDA
  if (kernel) {
    // a's memory layout (cuDNN's outputs are [B, T, H, D] in memory: the o projection then reads them as they lie).
    auto out = torch::empty_like(a);
    k::AttentionMergeParams p;
    p.a = a.data_ptr(), p.b = b.data_ptr(), p.out = out.data_ptr();
    p.lse_a = la.data_ptr<float>(), p.lse_b = lb.data_ptr<float>();
    copy_strides(p.a_stride, a), copy_strides(p.b_stride, b), copy_strides(p.out_stride, out);
    copy_strides(p.lse_a_stride, la), copy_strides(p.lse_b_stride, lb);
    p.batch = a.size(0), p.heads = a.size(1), p.tokens = a.size(2), p.head_dim = a.size(3);
    p.dtype = dt == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
    if (out.stride(3) == 1 && k::attention_merge_cuda_takes(p)) {
      const DeviceLaunch launch(a.device());
      const cudaError_t e = k::attention_merge_cuda(p, launch.stream());
      RTP_CHECK(e == cudaSuccess, "attention_merge: CUDA kernel failed: ", cudaGetErrorString(e));
      return out;
    }
  }
#else
  (void)kernel;
#endif
  // exp(la) / (exp(la) + exp(lb)): a's share of the whole sum, without forming either exponential.
  const auto share_a = torch::sigmoid(la - lb).unsqueeze(-1);
  return torch::lerp(b.to(torch::kFloat32), a.to(torch::kFloat32), share_a).to(dt);
}

}  // namespace rtp::ops
