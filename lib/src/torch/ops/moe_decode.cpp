#include "rtp/ops/moe_decode.h"

#include <torch/torch.h>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/moe_decode.h"
#include "rtp/ops/moe_grouped.h"
#include "device_launch.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool moe_decode_supported(torch::Device device, torch::ScalarType dtype) {
  if (!device.is_cuda()) return dtype == torch::kFloat32;
  return k::built_with_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kFloat32);
}

torch::Tensor moe_decode(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                         const torch::Tensor& gate_up, const torch::Tensor& down, const k::MoeDecodeLaunchShape& shape) {
  RTP_CHECK(moe_decode_supported(x.device(), x.scalar_type()), "moe_decode: x must be float32 (CPU) or bfloat16/float32 (CUDA build on a GPU), ",
            "found ", x.scalar_type(), " on ", x.device());
  RTP_CHECK(x.dim() == 2 && expert.dim() == 2 && expert.size(0) == x.size(0) && expert.scalar_type() == torch::kInt64,
            "moe_decode: x must be [N, H] and expert int64 [N, K], found ", x.sizes(), " and ", expert.sizes(), " ",
            expert.scalar_type());
  RTP_CHECK(weight.sizes() == expert.sizes(), "moe_decode: weight must be [N, K] like expert, found ", weight.sizes());
  // Its kernels have no backward: a forward that trains through the block takes the grouped block's ops.
  if (detail::backward_needed(x, weight, gate_up, down)) return moe_grouped(x, expert, weight, gate_up, down);
  const int64_t N = x.size(0), H = x.size(1), K = expert.size(1);
  RTP_CHECK(gate_up.dim() == 3 && gate_up.size(2) == H && gate_up.size(1) % 2 == 0,
            "moe_decode: gate_up must be [E, 2I, H] with H = ", H, ", found ", gate_up.sizes());
  const int64_t E = gate_up.size(0), I = gate_up.size(1) / 2;
  RTP_CHECK(down.dim() == 3 && down.size(0) == E && down.size(1) == H && down.size(2) == I,
            "moe_decode: down must be [E, H, I] = [", E, ", ", H, ", ", I, "], found ", down.sizes());
  for (const auto* t : {&expert, &weight, &gate_up, &down})
    RTP_CHECK(t->device() == x.device(), "moe_decode: every tensor must be on ", x.device(), ", found one on ", t->device());
  const auto dt = x.scalar_type();
  auto xc = x.contiguous(), ec = expert.contiguous(), wc = weight.to(dt).contiguous();
  auto gc = gate_up.to(dt).contiguous(), dc = down.to(dt).contiguous();
  auto out = torch::empty({N, H}, x.options());
  k::MoeDecodeParams p;
  p.x = xc.data_ptr();
  p.expert = ec.data_ptr<int64_t>();
  p.weight = wc.data_ptr();
  p.gate_up = gc.data_ptr();
  p.down = dc.data_ptr();
  p.out = out.data_ptr();
  p.tokens = N, p.top_k = K, p.experts = E, p.hidden = H, p.intermediate = I;
  p.dtype = dt == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  p.shape = shape;
  torch::Tensor act;
  if (x.is_cuda()) {
    act = torch::empty({N, K, I}, x.options());
    p.act = act.data_ptr();
  }
  const char* err = k::check_moe_decode_params(p, x.is_cuda());
  RTP_CHECK(!*err, err);
  if (x.is_cuda()) {
#ifdef RTPURBO_WITH_CUDA
    const DeviceLaunch launch(x.device());
    const cudaError_t e = k::moe_decode_cuda(p, launch.stream());
    RTP_CHECK(e == cudaSuccess, "moe_decode: CUDA kernel failed: ", cudaGetErrorString(e));
#endif
  } else {
    k::moe_decode_cpu(p);
  }
  return out;
}

}  // namespace rtp::ops
