#include "rtp/ops/rms_norm.h"

#include <torch/torch.h>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/norm_rope.h"
#include "device_launch.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool fused_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = x.scalar_type();
  return x.is_cuda() && k::built_with_cuda() && x.is_contiguous() && weight.device() == x.device() &&
         weight.scalar_type() == dt && (dt == torch::kBFloat16 || dt == torch::kFloat32) &&
         !detail::backward_needed(x, weight);
}

namespace {

// [B, T, H, dim] whose rows of a token are contiguous and whose tokens are evenly spaced (a narrow of a fused q/k/v
// projection's last dimension): the kernel reads it in place.
bool token_strided(const torch::Tensor& x) {
  return x.dim() == 4 && x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) >= x.size(2) * x.size(3) &&
         (x.size(0) == 1 || x.stride(0) == x.size(1) * x.stride(1));
}

}  // namespace

bool fused_rms_norm_rope_supported(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = x.scalar_type();
  return x.is_cuda() && k::built_with_cuda() && (x.is_contiguous() || token_strided(x)) &&
         weight.device() == x.device() && weight.scalar_type() == dt && (dt == torch::kBFloat16 || dt == torch::kFloat32) &&
         !detail::backward_needed(x, weight);
}

namespace {

void run(k::RmsNormParams& p, const torch::Tensor& x) {
  const char* err = k::check_rms_norm_params(p, x.is_cuda());
  RTP_CHECK(!*err, err);
  if (x.is_cuda()) {
#ifdef RTPURBO_WITH_CUDA
    const DeviceLaunch launch(x.device());
    const cudaError_t e = k::rms_norm_cuda(p, launch.stream());
    RTP_CHECK(e == cudaSuccess, "rms_norm: CUDA kernel failed: ", cudaGetErrorString(e));
#else
    RTP_THROW("rms_norm: a CUDA tensor was given but this build has no CUDA kernels");
#endif
  } else {
    k::rms_norm_cpu(p);
  }
}

k::RmsNormParams params(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& out, double eps) {
  RTP_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: weight must be [", x.size(-1),
            "], found ", weight.sizes());
  RTP_CHECK(x.scalar_type() == weight.scalar_type() && x.device() == weight.device(),
            "rms_norm: x and weight must share dtype and device, found ", x.scalar_type(), " on ", x.device(), " and ",
            weight.scalar_type(), " on ", weight.device());
  RTP_CHECK(x.is_cuda() ? (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat32)
                        : x.scalar_type() == torch::kFloat32,
            "rms_norm: expected bfloat16 or float32 (CUDA) or float32 (CPU), found ", x.scalar_type());
  k::RmsNormParams p;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.dim = x.size(-1);
  p.rows = x.numel() / std::max<int64_t>(1, p.dim);
  p.eps = static_cast<float>(eps);
  p.dtype = x.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  return p;
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x_in, const torch::Tensor& weight_in, double eps) {
  const auto x = x_in.contiguous(), weight = weight_in.contiguous();
  auto out = torch::empty_like(x);
  if (x.numel() == 0) return out;
  auto p = params(x, weight, out, eps);
  run(p, x);
  return out;
}

std::pair<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                                     const torch::Tensor& weight_in, double eps) {
  RTP_CHECK(x.sizes() == delta.sizes() && x.scalar_type() == delta.scalar_type() && x.device() == delta.device(),
            "add_rms_norm: x and delta must share shape, dtype and device, found ", x.sizes(), " ", x.scalar_type(), " on ",
            x.device(), " and ", delta.sizes(), " ", delta.scalar_type(), " on ", delta.device());
  RTP_CHECK(x.is_contiguous() && delta.is_contiguous(), "add_rms_norm: x and delta must be contiguous");
  const auto weight = weight_in.contiguous();
  auto sum = torch::empty_like(x), out = torch::empty_like(x);
  if (x.numel() == 0) return {sum, out};
  auto p = params(x, weight, out, eps);
  p.residual = delta.data_ptr();
  p.sum_out = sum.data_ptr();
  run(p, x);
  return {sum, out};
}

namespace {

struct NormRopeJob {
  torch::Tensor x, weight, cos, sin, out, rope;
  k::RmsNormParams p;
};

NormRopeJob norm_rope_job(const torch::Tensor& x_in, const torch::Tensor& weight_in, const torch::Tensor& cos_in,
                          const torch::Tensor& sin_in, double eps) {
  RTP_CHECK(x_in.dim() == 4, "rms_norm_rope: x must be [B, T, H, dim], found ", x_in.sizes());
  const int64_t T = x_in.size(1), D = x_in.size(3);
  RTP_CHECK(cos_in.dim() == 2 && cos_in.size(0) == T && cos_in.size(1) == D && sin_in.sizes() == cos_in.sizes(),
            "rms_norm_rope: cos and sin must be [T, dim] = [", T, ", ", D, "], found ", cos_in.sizes(), " and ",
            sin_in.sizes());
  RTP_CHECK(cos_in.scalar_type() == torch::kFloat32 && sin_in.scalar_type() == torch::kFloat32 &&
                cos_in.device() == x_in.device() && sin_in.device() == x_in.device(),
            "rms_norm_rope: cos and sin must be float32 on ", x_in.device());
  NormRopeJob j;
  // Read in place only where token_strided holds; else a contiguous tensor, whose tokens are heads x dim apart
  // (x_token_stride 0) whatever its stride(1) says: with one token per sequence that stride is never used to step and
  // may be anything (a [B, H, 1, dim] decode query transposed, as_strided), and the kernels would step by it.
  const bool in_place = token_strided(x_in);
  j.x = in_place ? x_in : x_in.contiguous();
  j.weight = weight_in.contiguous(), j.cos = cos_in.contiguous(), j.sin = sin_in.contiguous();
  j.out = torch::empty(j.x.sizes(), j.x.options()), j.rope = torch::empty(j.x.sizes(), j.x.options());
  if (j.x.numel() == 0) return j;
  j.p = params(j.x, j.weight, j.out, eps);
  j.p.x_token_stride = in_place ? j.x.stride(1) : 0;
  j.p.cos = j.cos.data_ptr<float>();
  j.p.sin = j.sin.data_ptr<float>();
  j.p.rope_out = j.rope.data_ptr();
  j.p.heads = j.x.size(2);
  j.p.seq_len = T;
  return j;
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> rms_norm_rope(const torch::Tensor& x, const torch::Tensor& weight,
                                                      const torch::Tensor& cos, const torch::Tensor& sin, double eps) {
  auto j = norm_rope_job(x, weight, cos, sin, eps);
  if (j.x.numel() > 0) run(j.p, j.x);
  return {j.out, j.rope};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> rms_norm_rope_qk(
    const torch::Tensor& q, const torch::Tensor& q_weight, const torch::Tensor& k, const torch::Tensor& k_weight,
    const torch::Tensor& cos, const torch::Tensor& sin, double eps) {
  auto a = norm_rope_job(q, q_weight, cos, sin, eps);
  auto b = norm_rope_job(k, k_weight, cos, sin, eps);
  const bool one_launch = a.x.is_cuda() && b.x.is_cuda() && a.x.numel() > 0 && b.x.numel() > 0 &&
                          a.x.scalar_type() == b.x.scalar_type() && a.x.device() == b.x.device();
  if (!one_launch) {
    if (a.x.numel() > 0) run(a.p, a.x);
    if (b.x.numel() > 0) run(b.p, b.x);
    return {a.out, a.rope, b.out, b.rope};
  }
#ifdef RTPURBO_WITH_CUDA
  for (const auto* j : {&a, &b}) {
    const char* err = k::check_rms_norm_params(j->p, true);
    RTP_CHECK(!*err, err);
  }
  const DeviceLaunch launch(a.x.device());
  const cudaError_t e = k::rms_norm_pair_cuda(a.p, b.p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "rms_norm_rope_qk: CUDA kernel failed: ", cudaGetErrorString(e));
#else
  RTP_THROW("rms_norm_rope_qk: CUDA tensors were given but this build has no CUDA kernels");
#endif
  return {a.out, a.rope, b.out, b.rope};
}

}  // namespace rtp::ops
