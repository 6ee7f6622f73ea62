// The decode-token store's CUDA kernel (rtp/kernels/sparse_token_store.h) against the float64 expectation of
// sparse_token_store_case.h: float32 within 1e-5; bf16 rows copied bit for bit and index projections within twice
// the error of the eager bf16 einsum the cache ran before; bf16 index keys under a float32 model; untouched elements
// untouched; head_dim 128 and 64.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <iostream>

#include "rtp/ops/sparse_token_store.h"
#include "sparse_token_store_case.h"

namespace {

const torch::Device kCuda(torch::kCUDA, 0);

double max_err(const torch::Tensor& a, const torch::Tensor& ref) {
  return (a.cpu().to(torch::kFloat64) - ref).abs().max().item<double>();
}

struct Run {
  std::vector<torch::Tensor> caches;
};

// Runs the kernel over the case's tensors converted to `dtype` (index keys to `index_dtype`) on the GPU.
Run run_on_gpu(const rtp::testing::TokenStoreCase& c, torch::ScalarType dtype, torch::ScalarType index_dtype) {
  const auto on = [&](const torch::Tensor& t, torch::ScalarType dt) { return t.to(kCuda, dt); };
  auto k_wide = on(c.k_wide, dtype), v_wide = on(c.v_wide, dtype);
  auto k = k_wide.narrow(1, 0, c.D), v = v_wide.narrow(1, c.D / 2, c.D);
  auto ks = on(c.ksrc, dtype), qs = on(c.qsrc, dtype), kw = on(c.kw, dtype), qw = on(c.qw, dtype);
  Run r;
  r.caches = {on(c.full_k, dtype), on(c.full_v, dtype), on(c.index_keys, index_dtype),
              on(c.index_q, dtype),  on(c.ring_k, dtype), on(c.ring_v, dtype)};
  auto pos = torch::full({1}, c.position, torch::TensorOptions(torch::kInt64).device(kCuda));
  auto slot = torch::full({1}, c.ring_slot, torch::TensorOptions(torch::kInt64).device(kCuda));
  const auto p = c.params(k, v, ks, qs, kw, qw, r.caches, pos.data_ptr<int64_t>(), slot.data_ptr<int64_t>());
  rtp::ops::sparse_token_store(p, kCuda);
  torch::cuda::synchronize();
  return r;
}

TEST(SparseTokenStoreCuda, Float32MatchesTheReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the token store kernel is tested on the GPU machine";
  for (const int64_t D : {40, 64, 128}) {
    rtp::testing::TokenStoreCase c(31, D);
    const auto got = run_on_gpu(c, torch::kFloat32, torch::kFloat32);
    const auto want = c.expected(c.k(), c.v(), c.ksrc, c.qsrc, c.kw, c.qw);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_LE(max_err(got.caches[i], want[i]), 1e-5) << "D " << D << " buffer " << i;
  }
}

TEST(SparseTokenStoreCuda, Bf16WithinTwiceTheEagerEinsum) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the token store kernel is tested on the GPU machine";
  for (const int64_t D : {64, 128}) {
    rtp::testing::TokenStoreCase c(32, D);
    const auto got = run_on_gpu(c, torch::kBFloat16, torch::kBFloat16);
    // The float64 expectation of the bf16-rounded inputs.
    const auto cb = c.rounded_to(torch::kBFloat16);
    const auto want = cb.expected(cb.k(), cb.v(), cb.ksrc, cb.qsrc, cb.kw, cb.qw);
    // k/v rows and untouched elements: the bf16 values exactly.
    for (size_t i : {0, 1, 4, 5}) EXPECT_EQ(max_err(got.caches[i], want[i]), 0.0) << "D " << D << " buffer " << i;
    // The index projections against the eager bf16 einsum the cache ran before.
    const auto kb = c.k().to(kCuda, torch::kBFloat16), ksb = c.ksrc.to(kCuda, torch::kBFloat16);
    const auto kwb = c.kw.to(kCuda, torch::kBFloat16), qwb = c.qw.to(kCuda, torch::kBFloat16);
    const auto qsb = c.qsrc.to(kCuda, torch::kBFloat16);
    auto naive_keys = torch::einsum("rid,rd->ri", {kwb, ksb.index_select(0, torch::tensor({0, 2}).to(kCuda))});
    auto naive_q = torch::einsum("rid,rd->ri", {qwb, qsb.view({c.Hkv, c.G, D}).index_select(0, torch::tensor({0, 2}).to(kCuda)).reshape({-1, D})});
    const auto keys_want = want[2].select(1, c.position), q_want = want[3].reshape({-1, c.I});
    const double e_keys = max_err(got.caches[2].select(1, c.position), keys_want), n_keys = max_err(naive_keys, keys_want);
    const double e_q = max_err(got.caches[3].reshape({-1, c.I}), q_want), n_q = max_err(naive_q, q_want);
    std::cout << "D " << D << ": bf16 index keys max |err| " << e_keys << " (eager einsum " << n_keys << "), index queries "
              << e_q << " (eager " << n_q << ")\n";
    EXPECT_LE(e_keys, 2 * n_keys + 1e-6);
    EXPECT_LE(e_q, 2 * n_q + 1e-6);
    // The rest of the index-key cache is untouched.
    auto rest = got.caches[2].cpu().to(torch::kFloat64).clone(), rest_want = want[2].clone();
    rest.select(1, c.position).zero_(), rest_want.select(1, c.position).zero_();
    EXPECT_EQ(max_err(rest, rest_want), 0.0);
  }
}

TEST(SparseTokenStoreCuda, Bf16IndexKeysUnderAFloat32Model) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the token store kernel is tested on the GPU machine";
  rtp::testing::TokenStoreCase c(33, 128);
  const auto got = run_on_gpu(c, torch::kFloat32, torch::kBFloat16);
  const auto want = c.expected(c.k(), c.v(), c.ksrc, c.qsrc, c.kw, c.qw);
  // One rounding of the float32 sum to bf16: within half a bf16 unit (2^-8 relative) plus float32 noise.
  const auto keys = got.caches[2].select(1, c.position).cpu().to(torch::kFloat64);
  const auto keys_want = want[2].select(1, c.position);
  EXPECT_LE(((keys - keys_want).abs() / (keys_want.abs() + 1e-3)).max().item<double>(), 1.0 / 256 + 1e-4);
  for (size_t i : {0, 1, 3, 4, 5}) EXPECT_LE(max_err(got.caches[i], want[i]), 1e-5) << "buffer " << i;
}

}  // namespace
