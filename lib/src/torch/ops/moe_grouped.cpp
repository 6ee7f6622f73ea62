#include "rtp/ops/moe_grouped.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/torch.h>

#include "backward_needed.h"
#include "device_launch.h"
#include "rtp/core/error.h"
#include "rtp/kernels/moe_combine.h"
#include "rtp/kernels/moe_group.h"
#include "rtp/ops/swiglu.h"

namespace rtp::ops {

namespace {
bool rows_aligned(const torch::Tensor& t) {
  const int64_t per16 = 16 / static_cast<int64_t>(t.element_size());
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 && t.size(-1) % per16 == 0 && t.is_contiguous();
}

// moe_combine's arithmetic by eager ops: three passes over the rows (gather, weigh in float32, sum) instead of one.
torch::Tensor combine_eager(const torch::Tensor& rows, const torch::Tensor& slot_row, const torch::Tensor& weight, int64_t K) {
  const int64_t N = rows.size(0) / K, H = rows.size(1);
  return (rows.index_select(0, slot_row).view({N, K, H}).to(torch::kFloat32) * weight.to(torch::kFloat32).view({N, K, 1}))
      .sum(1)
      .to(rows.scalar_type());
}

}  // namespace

bool moe_grouped_gemm_supported(const torch::Tensor& x, const torch::Tensor& gate_up, const torch::Tensor& down) {
  const auto dt = x.scalar_type();
  if (dt != torch::kFloat32 && dt != torch::kBFloat16 && dt != torch::kHalf) return false;
  if (gate_up.scalar_type() != dt || down.scalar_type() != dt) return false;
  // The intermediate rows (SwiGLU's output, I wide) are the second GEMM's input: they must be aligned too.
  const int64_t per16 = 16 / static_cast<int64_t>(x.element_size());
  return rows_aligned(gate_up) && rows_aligned(down) && down.size(-1) % per16 == 0 && x.size(-1) % per16 == 0;
}

torch::Tensor moe_grouped(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                          const torch::Tensor& gate_up, const torch::Tensor& down) {
  RTP_CHECK(x.dim() == 2 && expert.dim() == 2 && weight.sizes() == expert.sizes() && expert.size(0) == x.size(0),
            "moe_grouped: expected x [N, H], expert and weight [N, K], found x ", x.sizes(), ", expert ", expert.sizes(),
            ", weight ", weight.sizes());
  RTP_CHECK(gate_up.dim() == 3 && down.dim() == 3 && gate_up.size(2) == x.size(1) && gate_up.size(1) % 2 == 0 &&
                down.size(0) == gate_up.size(0) && down.size(1) == x.size(1) && down.size(2) * 2 == gate_up.size(1),
            "moe_grouped: expected gate_up [E, 2I, H] and down [E, H, I] with H = ", x.size(1), ", found ",
            gate_up.sizes(), " and ", down.sizes());
  RTP_CHECK(expert.scalar_type() == torch::kInt64, "moe_grouped: expert ids must be int64, found ", expert.scalar_type());
  const int64_t N = x.size(0), K = expert.size(1), H = x.size(1), E = gate_up.size(0), I = down.size(2);
  if (N == 0) return torch::zeros_like(x);
  // Slots grouped by expert (stable: a token's slots keep their order within an expert), and where each expert's run
  // ends, found on the device.
  const MoeSlotGroups groups = moe_group_slots(expert, E);
  const auto& ends = groups.ends;
  torch::Tensor y;  // [N K, H], slots in expert order
  {
    // Each temporary released as soon as the next step has it: a 32K-token forward of Qwen3-30B-A3B holds a few of
    // these [N K, 2I or H] tensors (about 1 GB each) at a time.
    auto xs = x.index_select(0, groups.row_token);
    if (moe_grouped_gemm_supported(x, gate_up, down)) {
      auto gu = at::_grouped_mm(xs, gate_up.transpose(1, 2), ends);
      xs = torch::Tensor();
      auto a = swiglu(gu.narrow(-1, 0, I), gu.narrow(-1, I, I));
      gu = torch::Tensor();
      y = at::_grouped_mm(a, down.transpose(1, 2), ends);
    } else {
      y = torch::empty({N * K, H}, x.options());
      const auto host_ends = ends.to(torch::kCPU, torch::kInt64);
      const int64_t* end = host_ends.data_ptr<int64_t>();
      for (int64_t e = 0, begin = 0; e < E; begin = end[e++]) {
        if (end[e] == begin) continue;
        const auto gu = torch::matmul(xs.narrow(0, begin, end[e] - begin), gate_up[e].t());
        y.narrow(0, begin, end[e] - begin).copy_(torch::matmul(swiglu(gu.narrow(-1, 0, I), gu.narrow(-1, I, I)), down[e].t()));
      }
    }
  }
  // Back to (token, slot) order, weighted in float32 and each token's K products summed, one rounding: one pass over
  // the rows on a GPU (moe_combine's kernel) instead of a scale, an unsorting copy and a sum.
  return moe_combine(y, groups.slot_row, weight.reshape(-1), K);
}

MoeSlotGroups moe_group_slots(const torch::Tensor& expert, int64_t experts) {
  RTP_CHECK(expert.dim() == 2 && expert.scalar_type() == torch::kInt64, "moe_group_slots: expected int64 expert ids ",
            "[N, K], found ", expert.scalar_type(), " ", expert.sizes());
  RTP_CHECK(experts > 0, "moe_group_slots: experts must be positive, found ", experts);
  const auto ids = expert.contiguous();
  const auto i64 = ids.options();
  if (ids.is_cuda() && experts > kernels::kMoeGroupMaxExperts) {
    // More experts than the kernels' shared memory holds: a stable sort and a search, as before the kernels.
    MoeSlotGroups g;
    const auto [sorted, order] = torch::sort(ids.reshape(-1), /*stable=*/true, 0, /*descending=*/false);
    g.ends = torch::searchsorted(sorted, torch::arange(experts, sorted.options()), /*out_int32=*/true, /*right=*/true);
    g.row_token = torch::div(order, ids.size(1), "floor");
    g.slot_row = torch::empty_like(order).index_copy_(0, order, torch::arange(ids.numel(), order.options()));
    return g;
  }
  MoeSlotGroups g{torch::empty({ids.numel()}, i64), torch::empty({experts}, i64.dtype(torch::kInt32)),
                  torch::empty({ids.numel()}, i64)};
  if (ids.numel() == 0) {
    g.ends.zero_();
    return g;
  }
  kernels::MoeGroupParams p;
  p.expert = ids.data_ptr<int64_t>();
  p.slots = ids.numel(), p.slots_per_token = ids.size(1), p.experts = experts;
  p.row_token = g.row_token.data_ptr<int64_t>(), p.slot_row = g.slot_row.data_ptr<int64_t>();
  p.ends = g.ends.data_ptr<int32_t>();
  if (ids.is_cuda()) {
#ifdef RTPURBO_WITH_CUDA
    const auto workspace = torch::empty({static_cast<int64_t>(kernels::moe_group_workspace_bytes(p.slots, experts))},
                                        i64.dtype(torch::kUInt8));
    p.workspace = workspace.data_ptr();
    const DeviceLaunch launch(ids.device());
    const cudaError_t e = kernels::moe_group_cuda(p, launch.stream());
    RTP_CHECK(e == cudaSuccess, "moe_group_slots: CUDA kernels failed: ", cudaGetErrorString(e), " (",
              kernels::check_moe_group_params(p, true), ")");
    return g;
#else
    RTP_THROW("moe_group_slots: a CUDA tensor in a build without CUDA");
#endif
  }
  const char* why = kernels::moe_group_cpu(p);
  RTP_CHECK(!*why, why, " (", experts, " experts, ids ", ids.sizes(), ")");
  return g;
}

torch::Tensor moe_combine(const torch::Tensor& rows, const torch::Tensor& slot_row, const torch::Tensor& weight,
                          int64_t slots_per_token) {
  const int64_t K = slots_per_token;
  RTP_CHECK(rows.dim() == 2 && slot_row.dim() == 1 && weight.dim() == 1 && slot_row.size(0) == rows.size(0) &&
                weight.size(0) == rows.size(0) && K >= 1 && rows.size(0) % K == 0,
            "moe_combine: expected rows [N K, H], slot_row and weight [N K] with K = ", K, ", found rows ", rows.sizes(),
            ", slot_row ", slot_row.sizes(), ", weight ", weight.sizes());
  RTP_CHECK(slot_row.scalar_type() == torch::kInt64, "moe_combine: slot_row must be int64, found ", slot_row.scalar_type());
  const int64_t N = rows.size(0) / K, H = rows.size(1);
  if (N == 0) return torch::zeros({0, H}, rows.options());
  if (!detail::backward_needed(rows, weight) && rows.is_cuda() &&
      (rows.scalar_type() == torch::kBFloat16 || rows.scalar_type() == torch::kFloat32) && rows.stride(1) == 1) {
#ifdef RTPURBO_WITH_CUDA
    const auto idx = slot_row.contiguous();
    const auto w = weight.to(torch::kFloat32).contiguous();
    auto out = torch::empty({N, H}, rows.options());
    kernels::MoeCombineParams p;
    p.rows = rows.data_ptr();
    p.slot_row = idx.data_ptr<int64_t>();
    p.weight = w.data_ptr<float>();
    p.out = out.data_ptr();
    p.tokens = N, p.slots_per_token = K, p.hidden = H, p.row_stride = rows.stride(0);
    p.dtype = rows.scalar_type() == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
    if (kernels::moe_combine_cuda_takes(p)) {
      const DeviceLaunch launch(rows.device());
      const cudaError_t e = kernels::moe_combine_cuda(p, launch.stream());
      RTP_CHECK(e == cudaSuccess, "moe_combine: CUDA kernel failed: ", cudaGetErrorString(e));
      return out;
    }
#endif
  }
  return combine_eager(rows, slot_row, weight, K);
}

}  // namespace rtp::ops
