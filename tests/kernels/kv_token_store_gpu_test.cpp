// The dense KV cache's one-token store on the GPU (rtp/kernels/kv_token_store.h) against index_copy_, bit for bit, in
// bf16 and float32, batch 1 and 3, on strided sources; a position past the capacity writes nothing.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "rtp/ops/kv_token_store.h"

namespace {

TEST(KvTokenStoreCuda, EqualsIndexCopy) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the KV token store kernel is tested on the GPU machine";
  const torch::Device dev(torch::kCUDA, 0);
  torch::manual_seed(52);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32})
    for (const int64_t B : {1, 3}) {
      const int64_t H = 8, D = 128, cap = 300;
      const auto opt = torch::TensorOptions(dtype).device(dev);
      auto kc = torch::randn({B, H, cap, D}, opt), vc = torch::randn({B, H, cap, D}, opt);
      auto wide = torch::randn({B, 1, (16 + 2 * H) * D}, opt);
      auto k = wide.narrow(-1, 16 * D, H * D).view({B, 1, H, D}).transpose(1, 2);
      auto v = wide.narrow(-1, (16 + H) * D, H * D).view({B, 1, H, D}).transpose(1, 2);
      auto pos = torch::full({1}, 211, torch::TensorOptions(torch::kInt64).device(dev));
      auto want_k = kc.clone().index_copy_(2, pos, k), want_v = vc.clone().index_copy_(2, pos, v);
      rtp::ops::kv_token_store(kc, vc, k, v, pos);
      EXPECT_TRUE(torch::equal(kc, want_k)) << dtype << " batch " << B;
      EXPECT_TRUE(torch::equal(vc, want_v)) << dtype << " batch " << B;
      auto before = vc.clone();
      rtp::ops::kv_token_store(kc, vc, k, v, torch::full({1}, cap, torch::TensorOptions(torch::kInt64).device(dev)));
      EXPECT_TRUE(torch::equal(vc, before)) << dtype << " batch " << B;
    }
}

}  // namespace
