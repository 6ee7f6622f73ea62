// The MoE combine CUDA kernel (rtp/kernels/moe_combine.h) against its CPU reference (float64 arithmetic): float32 to
// 1e-6 relative; bf16 at most twice the error of the eager bf16 steps it replaced (products rounded, then summed and
// rounded), on a prefill chunk of Qwen3-30B-A3B (4096 tokens x 8 slots x 2048) and odd token counts, rows wider than
// hidden. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <array>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/kernels/moe_combine.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using rtp::kernels::MoeCombineParams;

MoeCombineParams params(const torch::Tensor& rows, const torch::Tensor& slot_row, const torch::Tensor& weight,
                        torch::Tensor& out, int64_t K) {
  MoeCombineParams p;
  p.rows = rows.data_ptr(), p.slot_row = slot_row.data_ptr<int64_t>(), p.weight = weight.data_ptr<float>();
  p.out = out.data_ptr();
  p.tokens = out.size(0), p.slots_per_token = K, p.hidden = out.size(1), p.row_stride = rows.stride(0);
  p.dtype = rows.scalar_type() == torch::kBFloat16 ? rtp::kernels::DType::BF16 : rtp::kernels::DType::F32;
  return p;
}

TEST(MoeCombineCuda, MatchesTheReference) {
  if (!rtp::kernels::built_with_cuda() || !torch::cuda::is_available())
    GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
#ifdef RTPURBO_WITH_CUDA
  torch::manual_seed(17);
  const torch::Device dev(torch::kCUDA, 0);
  for (const auto& [N, K, H, stride] : std::vector<std::array<int64_t, 4>>{{4096, 8, 2048, 2048}, {77, 2, 64, 72}, {3, 1, 8, 8}}) {
    const auto rows = torch::randn({N * K, stride});
    const auto slot_row = torch::randperm(N * K, torch::kInt64);
    const auto weight = torch::rand({N * K});
    auto ref = torch::empty({N, H});
    auto rp = params(rows, slot_row, weight, ref, K);
    rtp::kernels::moe_combine_cpu(rp);  // float32 out of double sums
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const auto r = rows.to(dev, dtype), s = slot_row.to(dev), w = weight.to(dev);
      auto out = torch::empty({N, H}, r.options());
      auto p = params(r, s, w, out, K);
      ASSERT_STREQ(rtp::kernels::check_moe_combine_params(p, true), "");
      ASSERT_EQ(rtp::kernels::moe_combine_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), cudaSuccess);
      // The reference over the rows as the kernel sees them (bf16-rounded inputs).
      auto rin = r.to(torch::kCPU, torch::kFloat32).contiguous();
      auto exact = torch::empty({N, H});
      auto ep = params(rin, slot_row, weight, exact, K);
      rtp::kernels::moe_combine_cpu(ep);
      const double err = (out.cpu().to(torch::kFloat64) - exact.to(torch::kFloat64)).abs().max().item<double>();
      if (dtype == torch::kFloat32) {
        EXPECT_LE(err, 1e-6 * (1 + exact.abs().max().item<double>())) << N << " x " << K << " x " << H;
        EXPECT_LE((out.cpu() - ref).abs().max().item<double>(), 1e-5) << N << " x " << K << " x " << H;
      } else {
        const auto eager = (r.narrow(1, 0, H).index_select(0, s).view({N, K, H}) * w.to(dtype).view({N, K, 1})).sum(1);
        const double naive = (eager.cpu().to(torch::kFloat64) - exact.to(torch::kFloat64)).abs().max().item<double>();
        EXPECT_LE(err, 2 * naive) << N << " x " << K << " x " << H << ": kernel " << err << ", eager bf16 " << naive;
      }
    }
  }
#endif
}

}  // namespace
