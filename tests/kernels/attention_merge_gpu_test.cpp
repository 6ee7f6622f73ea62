// The attention merge CUDA kernel (rtp/kernels/attention_merge.h) against its CPU reference (double arithmetic):
// float32 to 1e-6; bfloat16 within twice the error of the exact result rounded to bfloat16 (the kernel rounds once).
// A prefill chunk of Qwen3-30B-A3B (32 heads, 4096 tokens, 128) in cuDNN's [B, T, H, D] memory layout with its
// [B, H, T, 1] log-sum-exps, and odd sizes; then the op on the GPU against its eager path. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <array>

#include "kernels/attention_merge_test_params.h"
#include "rtp/kernels/attention_merge.h"
#include "rtp/kernels/build_info.h"
#include "rtp/ops/attention_merge.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using rtp::test::attention_merge_params;

TEST(AttentionMergeCuda, MatchesTheReference) {
  if (!rtp::kernels::built_with_cuda() || !torch::cuda::is_available())
    GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
#ifdef RTPURBO_WITH_CUDA
  torch::manual_seed(21);
  const torch::Device dev(torch::kCUDA, 0);
  for (const auto& [B, H, T, D] : {std::array<int64_t, 4>{1, 32, 4096, 128}, {2, 3, 77, 64}, {1, 1, 1, 8}}) {
    const auto a = torch::randn({B, T, H, D}).transpose(1, 2);
    const auto b = torch::randn({B, T, H, D}).transpose(1, 2);
    const auto la = (torch::randn({B, H, T}) * 8).unsqueeze(-1), lb = (torch::randn({B, H, T}) * 8).unsqueeze(-1);
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      const auto ga = a.to(dev, dtype), gb = b.to(dev, dtype), gla = la.to(dev), glb = lb.to(dev);
      auto out = torch::empty_like(ga);
      auto p = attention_merge_params(ga, gla.select(3, 0), gb, glb.select(3, 0), out);
      ASSERT_STREQ(rtp::kernels::check_attention_merge_params(p, true), "");
      ASSERT_EQ(rtp::kernels::attention_merge_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), cudaSuccess);
      // The reference over the inputs as the kernel sees them (bf16-rounded).
      const auto ra = ga.cpu().to(torch::kFloat32), rb = gb.cpu().to(torch::kFloat32);
      auto exact = torch::empty({B, H, T, D});
      auto rp = attention_merge_params(ra, la.select(3, 0), rb, lb.select(3, 0), exact);
      rp.dtype = rtp::kernels::DType::F32;
      rtp::kernels::attention_merge_cpu(rp);
      const auto e64 = exact.to(torch::kFloat64);
      const double err = (out.cpu().to(torch::kFloat64) - e64).abs().max().item<double>();
      const double bound = dtype == torch::kFloat32
                               ? 1e-6 * (1 + e64.abs().max().item<double>())
                               : 2 * (exact.to(torch::kBFloat16).to(torch::kFloat64) - e64).abs().max().item<double>();
      EXPECT_LE(err, bound) << B << " x " << H << " x " << T << " x " << D;
      // The op: the kernel where it applies, the eager ops on the same inputs otherwise (float32 arithmetic, one
      // rounding both: at most a rounding apart).
      const auto op = rtp::ops::attention_merge(ga, gla, gb, glb);
      EXPECT_EQ(op.strides(), ga.strides());  // a's memory layout
      const auto eager = torch::lerp(gb.to(torch::kFloat32), ga.to(torch::kFloat32), torch::sigmoid(gla - glb)).to(dtype);
      EXPECT_LE((op.cpu().to(torch::kFloat64) - eager.cpu().to(torch::kFloat64)).abs().max().item<double>(), bound);
    }
  }
#endif
}

}  // namespace
