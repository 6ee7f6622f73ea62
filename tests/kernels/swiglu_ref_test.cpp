// The SwiGLU CPU reference (rtp/kernels/swiglu.h) against silu(gate) * up written with torch ops in double, on the
// two halves of a fused gate/up output (rows strided) and odd sizes; parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "rtp/kernels/swiglu.h"

namespace {

TEST(SwiGluRef, MatchesSiluTimesUpOnStridedHalves) {
  torch::manual_seed(11);
  for (const auto& [rows, inner] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 77}, {17, 256}}) {
    auto gu = torch::randn({rows, 2 * inner + 5}) * 4;  // 5 elements of padding: an odd row stride
    auto out = torch::empty({rows, inner});
    rtp::kernels::SwiGluParams p;
    p.gate = gu.data_ptr<float>();
    p.up = gu.data_ptr<float>() + inner;
    p.out = out.data_ptr<float>();
    p.rows = rows, p.inner = inner, p.in_row_stride = 2 * inner + 5;
    rtp::kernels::swiglu_cpu(p);
    auto g = gu.narrow(1, 0, inner).to(torch::kFloat64), u = gu.narrow(1, inner, inner).to(torch::kFloat64);
    auto ref = g / (1 + torch::exp(-g)) * u;
    EXPECT_LE((out.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-5 * (1 + ref.abs().max().item<double>()))
        << rows << " x " << inner;
  }
}

TEST(SwiGluRef, RejectsBadParameters) {
  rtp::kernels::SwiGluParams p;
  EXPECT_NE(std::string(rtp::kernels::check_swiglu_params(p, false)).find("null"), std::string::npos);
  float f = 0;
  p.gate = p.up = p.out = &f;
  p.rows = 2, p.inner = 8, p.in_row_stride = 7;
  EXPECT_NE(std::string(rtp::kernels::check_swiglu_params(p, false)).find("in_row_stride"), std::string::npos);
  p.in_row_stride = 16, p.dtype = rtp::kernels::DType::BF16;
  EXPECT_NE(std::string(rtp::kernels::check_swiglu_params(p, false)).find("float32 only"), std::string::npos);
  EXPECT_STREQ(rtp::kernels::check_swiglu_params(p, true), "");
}

}  // namespace
