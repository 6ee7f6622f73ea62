#include "rtp/ops/swiglu.h"

#include <torch/torch.h>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/swiglu.h"
#include "device_launch.h"
#include "row_layout.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

using detail::row_stride;

bool fused_swiglu_supported(const torch::Tensor& gate, const torch::Tensor& up) {
  const auto dt = gate.scalar_type();
  if (!gate.is_cuda() || !k::built_with_cuda() || up.device() != gate.device() || up.scalar_type() != dt ||
      up.sizes() != gate.sizes() || (dt != torch::kBFloat16 && dt != torch::kFloat32) || gate.numel() == 0 ||
      detail::backward_needed(gate, up))
    return false;
  const auto a = row_stride(gate), b = row_stride(up);
  return a && b && *a == *b;
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (!fused_swiglu_supported(gate, up)) return torch::silu(gate) * up;
#ifdef RTPURBO_WITH_CUDA
  auto out = torch::empty(gate.sizes(), gate.options());
  k::SwiGluParams p;
  p.gate = gate.data_ptr();
  p.up = up.data_ptr();
  p.out = out.data_ptr();
  p.inner = gate.size(-1);
  p.rows = gate.numel() / p.inner;
  p.in_row_stride = *row_stride(gate);
  p.dtype = gate.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  const char* err = k::check_swiglu_params(p, true);
  RTP_CHECK(!*err, err);
  const DeviceLaunch launch(gate.device());
  const cudaError_t e = k::swiglu_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "swiglu: CUDA kernel failed: ", cudaGetErrorString(e));
  return out;
#else
  return torch::silu(gate) * up;
#endif
}

}  // namespace rtp::ops
