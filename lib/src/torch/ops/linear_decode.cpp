#include "rtp/ops/linear_decode.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/gemv.h"
#include "device_launch.h"
#include "row_layout.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = x.scalar_type();
  if (!x.is_cuda() || !k::built_with_cuda() || x.dim() < 1 || weight.dim() != 2 || !weight.is_contiguous() ||
      weight.size(1) != x.size(-1) || weight.scalar_type() != dt || weight.device() != x.device() ||
      (dt != torch::kBFloat16 && dt != torch::kFloat32) || x.numel() == 0 || weight.size(0) == 0)
    return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())) return false;
  const int64_t rows = x.numel() / x.size(-1);
  return rows <= k::kGemvMaxRows && detail::row_stride(x).has_value();
}

torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight) {
  if (!gemv_supported(x, weight)) return at::linear(x, weight);
#ifdef RTPURBO_WITH_CUDA
  auto shape = x.sizes().vec();
  shape.back() = weight.size(0);
  auto out = torch::empty(shape, x.options());
  k::GemvParams p;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.k = x.size(-1);
  p.rows = x.numel() / p.k;
  p.m = weight.size(0);
  p.x_row_stride = *detail::row_stride(x);
  p.dtype = x.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  const char* err = k::check_gemv_params(p, true);
  RTP_CHECK(!*err, err);
  const DeviceLaunch launch(x.device());
  const cudaError_t e = k::gemv_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "linear_decode: CUDA kernel failed: ", cudaGetErrorString(e));
  return out;
#else
  return at::linear(x, weight);
#endif
}

bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio) {
  return weight.dim() == 2 && weight.size(0) <= max_ratio * weight.size(1);
}

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio) {
  return gemv_preferred(weight, max_ratio) ? linear_decode(x, weight) : at::linear(x, weight);
}

}  // namespace rtp::ops
