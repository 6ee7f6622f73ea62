// ops::moe_grouped on a GPU (bf16: one CUTLASS grouped GEMM per projection on Hopper; float32: the GEMM loop) against
// the block's definition in float64: bf16 within twice the error of the expert loop it replaced, float32 to 1e-4
// (TF32 off); sizes of Qwen3-30B-A3B's experts scaled down, experts without tokens. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <vector>

#include "moe_grouped_case.h"
#include "rtp/kernels/build_info.h"
#include "rtp/ops/moe_grouped.h"

namespace {

bool have_gpu() { return rtp::kernels::built_with_cuda() && torch::cuda::is_available(); }

TEST(MoeGroupedGpu, EqualsTheDefinition) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  for (const auto& [N, K, E, H, I] : std::vector<std::array<int64_t, 5>>{
           {300, 8, 128, 256, 96}, {77, 2, 6, 64, 48}, {5, 4, 32, 128, 64}}) {
    const auto c = rtp::testing::make_moe_case(N, K, E, H, I, 21);
    const auto ref = rtp::testing::moe_by_definition(c);
    const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
    const auto got = rtp::ops::moe_grouped(c.x.to(bf), c.expert.cuda(), c.weight.to(bf), c.gate_up.to(bf), c.down.to(bf));
    ASSERT_TRUE(got.is_cuda());
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    const double err = (got.cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
    const double naive = (rtp::testing::moe_expert_loop(c, bf).cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err, 2 * naive) << N << "x" << K << " of " << E << ": grouped " << err << ", expert loop " << naive;
    const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
    const auto g32 = rtp::ops::moe_grouped(c.x.to(f32), c.expert.cuda(), c.weight.to(f32), c.gate_up.to(f32), c.down.to(f32));
    const double err32 = (g32.cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err32, 1e-4 * (1 + ref.abs().max().item<double>())) << N << "x" << K << " of " << E;
  }
}

}  // namespace
