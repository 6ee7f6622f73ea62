// The MoE decode CUDA kernels (rtp/kernels/moe_decode.h) against the float64 reference: bf16 error at most twice that
// of the naive bf16 path (the model's eager per-expert libtorch ops, which round at the same points and sum the
// slots in bf16), float32 within 1e-5 relative; the Qwen3-30B-A3B expert shape, odd sizes (scalar loads), tails.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/kernels/build_info.h"
#include "rtp/ops/moe_decode.h"
#include "rtp/ops/rms_norm.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

// The model's grouped eager path, in the dtype of its inputs: linear, silu, product, linear, weight, index_add.
torch::Tensor naive(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                    const torch::Tensor& gate_up, const torch::Tensor& down) {
  auto out = torch::zeros_like(x);
  const int64_t N = x.size(0), K = expert.size(1);
  auto ex = expert.cpu();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t s = 0; s < K; ++s) {
      const int64_t e = ex[n][s].item<int64_t>();
      auto gu = at::linear(x.narrow(0, n, 1), gate_up[e]).chunk(2, -1);
      auto y = at::linear(torch::silu(gu[0]) * gu[1], down[e]) * weight.narrow(0, n, 1).narrow(1, s, 1);
      out.narrow(0, n, 1).add_(y);
    }
  return out;
}

struct Case {
  int64_t N, K, E, H, I;
};

// Random operands of a case on the GPU in dtype `dt`: K distinct experts per token, softmax routing weights.
struct Operands {
  torch::Tensor x, expert, weight, gate_up, down;
};
Operands random_operands(const Case& c, torch::ScalarType dt, const torch::Device& dev) {
  const auto o = torch::TensorOptions().device(dev).dtype(dt);
  Operands r;
  r.x = torch::randn({c.N, c.H}, o);
  r.expert = torch::empty({c.N, c.K}, torch::kInt64);
  for (int64_t n = 0; n < c.N; ++n) r.expert[n] = torch::randperm(c.E, torch::kInt64).narrow(0, 0, c.K);
  r.expert = r.expert.to(dev);
  r.weight = torch::softmax(torch::randn({c.N, c.K}, o.dtype(torch::kFloat32)), -1).to(dt);
  r.gate_up = (torch::randn({c.E, 2 * c.I, c.H}, o.dtype(torch::kFloat32)) / std::sqrt(double(c.H))).to(dt);
  r.down = (torch::randn({c.E, c.H, c.I}, o.dtype(torch::kFloat32)) / std::sqrt(double(c.I))).to(dt);
  return r;
}

// The one launch in the form it takes where the cooperative launch is refused (every item from the count), which
// ops::moe_decode reaches only on such a device: the kernel entry point called directly, as ops would.
torch::Tensor one_launch_by_count(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                                  const torch::Tensor& gate_up, const torch::Tensor& down, int rows,
                                  const torch::Tensor& counts) {
  auto out = torch::empty_like(x);
#ifdef RTPURBO_WITH_CUDA
  const int64_t N = x.size(0), K = expert.size(1), E = gate_up.size(0), H = x.size(1), I = down.size(2);
  auto act = torch::empty({N, K, I}, x.options());
  rtp::kernels::MoeDecodeParams p;
  p.x = x.data_ptr(), p.expert = expert.data_ptr<int64_t>(), p.weight = weight.data_ptr();
  p.gate_up = gate_up.data_ptr(), p.down = down.data_ptr(), p.out = out.data_ptr(), p.act = act.data_ptr();
  p.tokens = N, p.top_k = K, p.experts = E, p.hidden = H, p.intermediate = I;
  p.dtype = x.scalar_type() == torch::kBFloat16 ? rtp::kernels::DType::BF16 : rtp::kernels::DType::F32;
  p.shape = {rows, 8, false, true};
  p.done = static_cast<uint32_t*>(counts.data_ptr());
  p.one_launch_by_count = true;
  EXPECT_STREQ(rtp::kernels::check_moe_decode_params(p, true), "");
  EXPECT_EQ(rtp::kernels::moe_decode_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), cudaSuccess);
#else
  ADD_FAILURE() << "a build without CUDA has no MoE decode kernels";
#endif
  return out;
}

TEST(MoeDecodeCuda, WithinTwiceNaiveBf16AndFloat32Exact) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the MoE decode kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(17);
  for (const Case c : {Case{1, 8, 128, 2048, 768}, Case{3, 8, 128, 2048, 768}, Case{2, 3, 7, 100, 37}, Case{5, 2, 4, 264, 40}}) {
    auto x = torch::randn({c.N, c.H}, torch::kFloat64);
    auto expert = torch::empty({c.N, c.K}, torch::kInt64);
    for (int64_t n = 0; n < c.N; ++n) expert[n] = torch::randperm(c.E, torch::kInt64).narrow(0, 0, c.K);
    auto weight = torch::softmax(torch::randn({c.N, c.K}, torch::kFloat64), -1);
    auto gate_up = torch::randn({c.E, 2 * c.I, c.H}, torch::kFloat64) / std::sqrt(double(c.H));
    auto down = torch::randn({c.E, c.H, c.I}, torch::kFloat64) / std::sqrt(double(c.I));
    // The reference sees the bf16-rounded inputs: the error measured is the kernels', not the inputs' rounding.
    auto r = [](const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat64); };
    auto w16 = r(weight);
    auto ref = rtp::ops::moe_decode(r(x).to(torch::kFloat32), expert, w16.to(torch::kFloat32), r(gate_up).to(torch::kFloat32),
                                    r(down).to(torch::kFloat32)).to(torch::kFloat64);
    auto b = [&](const torch::Tensor& t) { return t.to(dev, torch::kBFloat16); };
    auto got = rtp::ops::moe_decode(b(x), expert.to(dev), b(weight), b(gate_up), b(down)).cpu().to(torch::kFloat64);
    auto base = naive(b(x), expert.to(dev), b(weight), b(gate_up), b(down)).cpu().to(torch::kFloat64);
    const double err = (got - ref).abs().max().item<double>(), naive_err = (base - ref).abs().max().item<double>();
    std::cout << c.N << " tokens x " << c.K << " of " << c.E << " experts, H " << c.H << ", I " << c.I
              << ": bf16 max |err| " << err << " (naive bf16 " << naive_err << ")\n";
    EXPECT_LE(err, 2 * naive_err + 1e-6);
    auto f = [&](const torch::Tensor& t) { return t.to(dev, torch::kFloat32); };
    auto ref32 = rtp::ops::moe_decode(x.to(torch::kFloat32), expert, weight.to(torch::kFloat32), gate_up.to(torch::kFloat32),
                                      down.to(torch::kFloat32)).to(torch::kFloat64);
    auto got32 = rtp::ops::moe_decode(f(x), expert.to(dev), f(weight), f(gate_up), f(down)).cpu().to(torch::kFloat64);
    EXPECT_LE((got32 - ref32).abs().max().item<double>(), 1e-5 * (1 + ref32.abs().max().item<double>()));
  }
}

// Every launch shape computes the same sums in the same order: the same bits as the default shape, in bf16 and float32,
// on shapes with row tails for 2 and 4 rows per warp and 4 or 8 warps per block, rows longer than the loads ahead
// cover (I 1544), and the scalar path.
TEST(MoeDecodeCuda, EveryLaunchShapeGivesTheSameBits) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the MoE decode kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(23);
  for (const Case c : {Case{1, 8, 128, 2048, 768}, Case{2, 8, 16, 2056, 1544}, Case{3, 5, 9, 264, 1000},
                       Case{5, 2, 4, 268, 40}, Case{2, 3, 7, 100, 37}}) {
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const auto [x, expert, weight, gate_up, down] = random_operands(c, dt, dev);
      // Two launches, one gate/up row per warp, no loads ahead: the kernels as they were before the launch shapes.
      const auto plain = rtp::ops::moe_decode(x, expert, weight, gate_up, down, {1, 8, false, false});
      for (const int rows : {1, 2, 4})
        for (const int warps : {4, 8})
          for (const bool ahead : {false, true}) {
            const auto got = rtp::ops::moe_decode(x, expert, weight, gate_up, down, {rows, warps, ahead, false});
            EXPECT_TRUE(torch::equal(got, plain)) << c.N << " tokens, H " << c.H << ", I " << c.I << ", " << dt << ": "
                                                  << rows << " rows per warp, " << warps << " warps, ahead " << ahead
                                                  << ": max difference " << (got - plain).abs().max().item<double>();
          }
      // Both passes in one launch (the default shape): cooperative with counts given (back at 0 after each launch,
      // twice in a row) and made per call, then every item from the count (the form where the cooperative launch is
      // refused).
      auto counts = torch::zeros({3}, torch::TensorOptions(torch::kInt32).device(dev));
      for (const int rows : {1, 2})
        for (int rep = 0; rep < 5; ++rep) {
          const rtp::kernels::MoeDecodeLaunchShape shape{rows, 8, true, true};
          const auto got = rep < 2   ? rtp::ops::moe_decode(x, expert, weight, gate_up, down, shape, counts)
                           : rep < 3 ? rtp::ops::moe_decode(x, expert, weight, gate_up, down, shape)
                                     : one_launch_by_count(x, expert, weight, gate_up, down, rows, counts);
          const char* form = rep < 3 ? "cooperative" : "every item from the count";
          EXPECT_TRUE(torch::equal(got, plain)) << c.N << " tokens, H " << c.H << ", I " << c.I << ", " << dt << ": "
                                                << rows << " rows per warp, one launch, " << form
                                                << ": max difference " << (got - plain).abs().max().item<double>();
          EXPECT_EQ(counts.abs().sum().item<int64_t>(), 0) << form << ": the counts must be back at 0";
        }
    }
  }
}

// The residual add + RMSNorm in the down pass's launch (moe_decode_add_rms_norm, the last block) against the unfused
// path (moe_decode, then add_rms_norm): the sum the same bits (the same products, one rounding of the add); the normed
// row the same bits where the epilogue reduces as the norm kernel does (2048 wide, 8 warps of the down pass: 256
// threads of 8 elements in both), elsewhere within twice the unfused path's error against float64. Every launch shape
// (both passes in one launch too),
// the scalar down pass (I odd), 1-5 tokens, bf16 and float32; the count back at 0 after each launch, twice in a row.
TEST(MoeDecodeCuda, AddRmsNormEpilogueMatchesTheUnfusedPath) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the MoE decode kernels are tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(29);
  const double eps = 1e-6;
  auto done = torch::zeros({3}, torch::TensorOptions(torch::kInt32).device(dev));
  const rtp::kernels::MoeDecodeLaunchShape shapes[] = {{1, 8, false, false}, {2, 8, true, false}, {2, 4, true, false},
                                                       {4, 4, false, false}, {2, 8, true, true},  {1, 8, false, true}};
  for (const Case c : {Case{1, 8, 128, 2048, 768}, Case{2, 8, 16, 2048, 1544}, Case{3, 5, 9, 264, 1000},
                       Case{5, 2, 4, 4100, 40}, Case{2, 3, 7, 100, 37}}) {
    for (const auto dt : {torch::kBFloat16, torch::kFloat32}) {
      const auto o = torch::TensorOptions().device(dev).dtype(dt);
      const auto [x, expert, weight, gate_up, down] = random_operands(c, dt, dev);
      auto residual = torch::randn({c.N, c.H}, o);
      auto nw = (torch::rand({c.H}, o.dtype(torch::kFloat32)) + 0.5).to(dt);
      ASSERT_TRUE(rtp::ops::moe_decode_add_rms_norm_supported(x, weight, gate_up, down, residual, nw, done));
      // One count: the two launches where the shape asks for one (which takes three), with the same result.
      ASSERT_TRUE(rtp::ops::moe_decode_add_rms_norm_supported(x, weight, gate_up, down, residual, nw, done.narrow(0, 0, 1)));
      {
        const auto [one_count_sum, one_count_normed] = rtp::ops::moe_decode_add_rms_norm(
            x, expert, weight, gate_up, down, residual, nw, eps, done.narrow(0, 0, 1), {2, 8, true, true});
        const auto [three_sum, three_normed] = rtp::ops::moe_decode_add_rms_norm(
            x, expert, weight, gate_up, down, residual, nw, eps, done, {2, 8, true, false});
        EXPECT_TRUE(torch::equal(one_count_sum, three_sum) && torch::equal(one_count_normed, three_normed));
        EXPECT_EQ(done.abs().sum().item<int64_t>(), 0);
      }
      for (const auto& shape : shapes) {
        const std::string what = std::to_string(c.N) + " x " + std::to_string(c.H) + ", I " + std::to_string(c.I) +
                                 (dt == torch::kBFloat16 ? " bf16" : " f32") + ", shape " +
                                 std::to_string(shape.gate_up_rows_per_warp) + "," +
                                 std::to_string(shape.down_warps_per_block) + "," +
                                 std::to_string(int(shape.down_loads_ahead)) + (shape.one_launch ? ", one launch" : "");
        auto moe = rtp::ops::moe_decode(x, expert, weight, gate_up, down, shape);
        auto [usum, unormed] = rtp::ops::add_rms_norm(residual, moe, nw, eps);
        auto s64 = moe.to(torch::kFloat64) + residual.to(torch::kFloat64);
        auto n64 = nw.to(torch::kFloat64) * s64 * torch::rsqrt(s64.pow(2).mean(-1, true) + eps);
        const auto err = [](const torch::Tensor& a, const torch::Tensor& r) {
          return (a.to(torch::kFloat64) - r).abs().max().item<double>();
        };
        for (int rep = 0; rep < 2; ++rep) {
          auto [sum, normed] =
              rtp::ops::moe_decode_add_rms_norm(x, expert, weight, gate_up, down, residual, nw, eps, done, shape);
          EXPECT_EQ(done.abs().sum().item<int64_t>(), 0) << what << ": the counts must be back at 0";
          EXPECT_TRUE(torch::equal(sum, usum)) << what;
          EXPECT_LE(err(normed, n64), 2 * err(unormed, n64) + 1e-6) << what;
          const bool same_layout = c.H == 2048 && shape.down_warps_per_block == 8;
          if (same_layout) EXPECT_TRUE(torch::equal(normed, unormed)) << what;
          if (rep == 0 && dt == torch::kBFloat16 && shape.gate_up_rows_per_warp == 2 && shape.down_warps_per_block == 8)
            std::cout << what << ": normed max |err| " << err(normed, n64) << " (unfused " << err(unormed, n64) << ")\n";
        }
      }
    }
  }
}

}  // namespace
