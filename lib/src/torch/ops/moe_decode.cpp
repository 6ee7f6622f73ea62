#include "rtp/ops/moe_decode.h"

#include <torch/torch.h>

#include <vector>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/moe_decode.h"
#include "rtp/ops/moe_grouped.h"
#include "device_launch.h"
#include "launch_counter.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool moe_decode_supported(torch::Device device, torch::ScalarType dtype) {
  if (!device.is_cuda()) return dtype == torch::kFloat32;
  return k::built_with_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kFloat32);
}

namespace {

// Checks the operands and fills the launch's parameters; the tensors it points at are kept in `keep`.
struct Launch {
  k::MoeDecodeParams p;
  std::vector<torch::Tensor> keep;
};

Launch moe_decode_launch(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                         const torch::Tensor& gate_up, const torch::Tensor& down, const torch::Tensor& out,
                         const k::MoeDecodeLaunchShape& shape) {
  const int64_t N = x.size(0), H = x.size(1), K = expert.size(1);
  RTP_CHECK(gate_up.dim() == 3 && gate_up.size(2) == H && gate_up.size(1) % 2 == 0,
            "moe_decode: gate_up must be [E, 2I, H] with H = ", H, ", found ", gate_up.sizes());
  const int64_t E = gate_up.size(0), I = gate_up.size(1) / 2;
  RTP_CHECK(down.dim() == 3 && down.size(0) == E && down.size(1) == H && down.size(2) == I,
            "moe_decode: down must be [E, H, I] = [", E, ", ", H, ", ", I, "], found ", down.sizes());
  for (const auto* t : {&expert, &weight, &gate_up, &down})
    RTP_CHECK(t->device() == x.device(), "moe_decode: every tensor must be on ", x.device(), ", found one on ", t->device());
  const auto dt = x.scalar_type();
  Launch l;
  l.keep = {x.contiguous(), expert.contiguous(), weight.to(dt).contiguous(), gate_up.to(dt).contiguous(),
            down.to(dt).contiguous()};
  k::MoeDecodeParams& p = l.p;
  p.x = l.keep[0].data_ptr();
  p.expert = l.keep[1].data_ptr<int64_t>();
  p.weight = l.keep[2].data_ptr();
  p.gate_up = l.keep[3].data_ptr();
  p.down = l.keep[4].data_ptr();
  p.out = out.data_ptr();
  p.tokens = N, p.top_k = K, p.experts = E, p.hidden = H, p.intermediate = I;
  p.dtype = dt == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  p.shape = shape;
  if (x.is_cuda()) {
    l.keep.push_back(torch::empty({N, K, I}, x.options()));
    p.act = l.keep.back().data_ptr();
  }
  return l;
}

void run(const k::MoeDecodeParams& p, const torch::Tensor& x) {
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
}

void check_inputs(const char* op, const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight) {
  RTP_CHECK(moe_decode_supported(x.device(), x.scalar_type()), op, ": x must be float32 (CPU) or bfloat16/float32 (CUDA build on a GPU), ",
            "found ", x.scalar_type(), " on ", x.device());
  RTP_CHECK(x.dim() == 2 && expert.dim() == 2 && expert.size(0) == x.size(0) && expert.scalar_type() == torch::kInt64,
            op, ": x must be [N, H] and expert int64 [N, K], found ", x.sizes(), " and ", expert.sizes(), " ",
            expert.scalar_type());
  RTP_CHECK(weight.sizes() == expert.sizes(), op, ": weight must be [N, K] like expert, found ", weight.sizes());
}

}  // namespace

torch::Tensor moe_decode(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                         const torch::Tensor& gate_up, const torch::Tensor& down, const k::MoeDecodeLaunchShape& shape,
                         const torch::Tensor& counts) {
  check_inputs("moe_decode", x, expert, weight);
  // Its kernels have no backward: a forward that trains through the block takes the grouped block's ops.
  if (detail::backward_needed(x, weight, gate_up, down)) return moe_grouped(x, expert, weight, gate_up, down);
  auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  auto l = moe_decode_launch(x, expert, weight, gate_up, down, out, shape);
  if (shape.one_launch && x.is_cuda()) {
    RTP_CHECK(!counts.defined() || detail::is_launch_counter(counts, x, 3),
              "moe_decode: one_launch's counts must be int32, contiguous, at least 3 of them, on ", x.device(),
              "; found ", counts.sizes(), " ", counts.scalar_type(), " on ", counts.device());
    l.keep.push_back(counts.defined() ? counts : torch::zeros({3}, x.options().dtype(torch::kInt32)));
    l.p.done = static_cast<uint32_t*>(l.keep.back().data_ptr());
  }
  run(l.p, x);
  return out;
}

bool moe_decode_add_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight,
                                       const torch::Tensor& gate_up, const torch::Tensor& down,
                                       const torch::Tensor& residual, const torch::Tensor& norm_weight,
                                       const torch::Tensor& done) {
  const auto same = [&](const torch::Tensor& t) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.is_contiguous();
  };
  return x.defined() && x.is_cuda() && x.dim() == 2 && moe_decode_supported(x.device(), x.scalar_type()) &&
         same(residual) && residual.numel() == x.numel() && residual.size(-1) == x.size(1) && same(norm_weight) &&
         norm_weight.dim() == 1 && norm_weight.size(0) == x.size(1) && detail::is_launch_counter(done, x, 1) &&
         !detail::backward_needed(x, weight, gate_up, down, residual, norm_weight);
}

std::pair<torch::Tensor, torch::Tensor> moe_decode_add_rms_norm(const torch::Tensor& x, const torch::Tensor& expert,
                                                                const torch::Tensor& weight,
                                                                const torch::Tensor& gate_up, const torch::Tensor& down,
                                                                const torch::Tensor& residual,
                                                                const torch::Tensor& norm_weight, double eps,
                                                                const torch::Tensor& done,
                                                                const k::MoeDecodeLaunchShape& shape) {
  check_inputs("moe_decode_add_rms_norm", x, expert, weight);
  RTP_CHECK(!detail::backward_needed(x, weight, gate_up, down, residual, norm_weight),
            "moe_decode_add_rms_norm: the fused kernels have no backward; with gradients take moe_decode and add_rms_norm");
  RTP_CHECK(moe_decode_add_rms_norm_supported(x, weight, gate_up, down, residual, norm_weight, done),
            "moe_decode_add_rms_norm: expected x [N, H] on a GPU, residual of x's shape and norm_weight [H] (contiguous, "
            "x's dtype and device), done int32 on that device; found x ", x.sizes(), " ",
            x.scalar_type(), " on ",
            x.device(), ", residual ", residual.sizes(), ", norm_weight ", norm_weight.sizes(), ", done ", done.sizes(),
            " ", done.scalar_type());
  auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  auto sum = torch::empty_like(residual), normed = torch::empty_like(residual);
  // One launch takes three counts; with fewer, the two launches (the same result).
  auto two_where_one_count = shape;
  if (done.numel() < 3) two_where_one_count.one_launch = false;
  auto l = moe_decode_launch(x, expert, weight, gate_up, down, out, two_where_one_count);
  l.p.residual = residual.data_ptr();
  l.p.norm_weight = norm_weight.data_ptr();
  l.p.sum_out = sum.data_ptr();
  l.p.normed_out = normed.data_ptr();
  l.p.done = static_cast<uint32_t*>(done.data_ptr());
  l.p.eps = static_cast<float>(eps);
  run(l.p, x);
  return {sum, normed};
}

}  // namespace rtp::ops
