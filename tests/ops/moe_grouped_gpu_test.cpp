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

// Training through the block on a GPU takes the eager combine (the kernel has no backward): float32 gradients of x,
// the routing weights and both expert weights equal the definition's in float64 (TF32 off); bf16 ones within twice
// the error of the expert loop's.
TEST(MoeGroupedGpu, GradientsEqualTheDefinitions) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  const auto c = rtp::testing::make_moe_case(300, 8, 64, 256, 96, 23);
  const auto probe = torch::randn({300, 256});
  const auto ref = rtp::testing::moe_gradients(c, probe, torch::kFloat64, rtp::testing::moe_definition_differentiable);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA);
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  const auto got32 = rtp::testing::moe_gradients(c, probe, f32, rtp::ops::moe_grouped);
  const auto got16 = rtp::testing::moe_gradients(c, probe, bf, rtp::ops::moe_grouped);
  const auto loop = [&](const torch::Tensor& x, const torch::Tensor& e, const torch::Tensor& w, const torch::Tensor& gu,
                        const torch::Tensor& d) {
    // The expert loop by the case's routing, on these (differentiable) tensors.
    auto out = torch::zeros_like(x);
    const int64_t K = e.size(1), I = d.size(2);
    const auto flat = e.reshape(-1);
    for (int64_t ex = 0; ex < gu.size(0); ++ex) {
      const auto slots = (flat == ex).nonzero().reshape(-1);
      if (slots.numel() == 0) continue;
      const auto tokens = torch::div(slots, K, "floor");
      const auto g = torch::matmul(x.index_select(0, tokens), gu[ex].t());
      const auto y = torch::matmul(torch::silu(g.narrow(-1, 0, I)) * g.narrow(-1, I, I), d[ex].t());
      out = out.index_add(0, tokens, y * w.reshape(-1).index_select(0, slots).unsqueeze(-1));
    }
    return out;
  };
  const auto naive16 = rtp::testing::moe_gradients(c, probe, bf, loop);
  const char* names[] = {"x", "weight", "gate_up", "down"};
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(got32[i].defined() && got16[i].defined()) << names[i] << ": no gradient reached it";
    const double scale = 1 + ref[i].abs().max().item<double>();
    const double err32 = (got32[i].cpu().to(torch::kFloat64) - ref[i]).abs().max().item<double>();
    EXPECT_LE(err32, 1e-4 * scale) << names[i];
    const double err16 = (got16[i].cpu().to(torch::kFloat64) - ref[i]).abs().max().item<double>();
    const double naive = (naive16[i].cpu().to(torch::kFloat64) - ref[i]).abs().max().item<double>();
    EXPECT_LE(err16, 2 * naive) << names[i] << ": grouped " << err16 << ", expert loop " << naive;
  }
}

// moe_combine on a GPU takes the kernel (kernels/moe_combine.h) for 16-byte rows: against the formula in float64,
// bf16 within twice the error of eager steps (products rounded, then summed), float32 to 1e-5.
TEST(MoeGroupedGpu, CombineKernelEqualsTheFormula) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(22);
  const int64_t N = 1000, K = 8, H = 256;
  const auto rows = torch::randn({N * K, H});
  const auto slot_row = torch::randperm(N * K, torch::kInt64);
  const auto weight = torch::rand({N * K}).to(torch::kBFloat16).to(torch::kFloat32);  // as a bf16 router gives them
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const auto r = rows.to(torch::kCUDA, dtype), s = slot_row.cuda(), w = weight.cuda();
    const auto got = rtp::ops::moe_combine(r, s, w, K);
    ASSERT_TRUE(got.is_cuda());
    const auto ref = (r.cpu().to(torch::kFloat64).index_select(0, slot_row).view({N, K, H}) *
                      weight.to(torch::kFloat64).view({N, K, 1}))
                         .sum(1);
    const double err = (got.cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
    if (dtype == torch::kFloat32) {
      EXPECT_LE(err, 1e-5);
    } else {
      const auto eager = (r.index_select(0, s).view({N, K, H}) * w.to(dtype).view({N, K, 1})).sum(1);
      const double naive = (eager.cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
      EXPECT_LE(err, 2 * naive) << "kernel " << err << ", eager " << naive;
    }
  }
}

}  // namespace
