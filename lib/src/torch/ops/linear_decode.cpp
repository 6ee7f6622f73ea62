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

namespace {

// The parameters of x W^T into a new tensor `out` (shapes checked by gemv_supported).
k::GemvParams gemv_params(const torch::Tensor& x, const torch::Tensor& weight, torch::Tensor& out) {
  auto shape = x.sizes().vec();
  shape.back() = weight.size(0);
  out = torch::empty(shape, x.options());
  k::GemvParams p;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.k = x.size(-1);
  p.rows = x.numel() / p.k;
  p.m = weight.size(0);
  p.x_row_stride = *detail::row_stride(x);
  p.dtype = x.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  return p;
}

void run_gemv(const k::GemvParams& p, torch::Device device, const char* what) {
  const char* err = k::check_gemv_params(p, true);
  RTP_CHECK(!*err, what, ": ", err);
#ifdef RTPURBO_WITH_CUDA
  const DeviceLaunch launch(device);
  const cudaError_t e = k::gemv_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, what, ": CUDA kernel failed: ", cudaGetErrorString(e));
#else
  (void)device;
  RTP_CHECK(false, what, ": built without CUDA");
#endif
}

}  // namespace

torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight, k::GemvLayout layout) {
  if (!gemv_supported(x, weight)) return at::linear(x, weight);
  torch::Tensor out;
  k::GemvParams p = gemv_params(x, weight, out);
  p.layout = layout;
  run_gemv(p, x.device(), "linear_decode");
  return out;
}

bool gemv_add_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& residual,
                                 const torch::Tensor& norm_weight, const torch::Tensor& done) {
  if (!gemv_supported(x, weight)) return false;
  const int64_t m = weight.size(0), rows = x.numel() / x.size(-1);
  const auto same = [&](const torch::Tensor& t) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.is_contiguous();
  };
  return same(residual) && residual.dim() >= 1 && residual.size(-1) == m && residual.numel() == rows * m &&
         same(norm_weight) && norm_weight.dim() == 1 && norm_weight.size(0) == m && done.defined() &&
         done.device() == x.device() && done.scalar_type() == torch::kInt32 && done.numel() >= 1;
}

std::pair<torch::Tensor, torch::Tensor> linear_decode_add_rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                                   const torch::Tensor& residual,
                                                                   const torch::Tensor& norm_weight, double eps,
                                                                   const torch::Tensor& done) {
  RTP_CHECK(gemv_add_rms_norm_supported(x, weight, residual, norm_weight, done),
            "linear_decode_add_rms_norm: expected x [..., k] of at most ", k::kGemvMaxRows,
            " rows on a GPU, weight [m, k], residual of x's rows times m and norm_weight [m] (contiguous, x's dtype and "
            "device), done int32 on that device; found x ", x.sizes(), " ", x.scalar_type(), " on ", x.device(),
            ", weight ", weight.sizes(), ", residual ", residual.sizes(), ", norm_weight ", norm_weight.sizes(),
            ", done ", done.sizes(), " ", done.scalar_type());
  torch::Tensor out;
  auto p = gemv_params(x, weight, out);
  auto sum = torch::empty_like(residual), normed = torch::empty_like(residual);
  p.residual = residual.data_ptr();
  p.norm_weight = norm_weight.data_ptr();
  p.sum_out = sum.data_ptr();
  p.normed_out = normed.data_ptr();
  p.done = static_cast<uint32_t*>(done.data_ptr());
  p.eps = static_cast<float>(eps);
  run_gemv(p, x.device(), "linear_decode_add_rms_norm");
  return {sum, normed};
}

bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio) {
  return weight.dim() == 2 && weight.size(0) <= max_ratio * weight.size(1);
}

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio, k::GemvLayout layout) {
  return gemv_preferred(weight, max_ratio) ? linear_decode(x, weight, layout) : at::linear(x, weight);
}

}  // namespace rtp::ops
