// The dense KV cache's one-token store (rtp/kernels/kv_token_store.h), CPU reference through ops::kv_token_store,
// against index_copy_ (the eager store it replaces) on strided sources; a position past the capacity writes nothing;
// bad tensors are an error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "rtp/ops/kv_token_store.h"
#include "test_util.h"

namespace {

TEST(KvTokenStoreRef, EqualsIndexCopyOnStridedSources) {
  torch::manual_seed(51);
  const int64_t B = 2, H = 3, D = 5, cap = 7;
  auto kc = torch::randn({B, H, cap, D}), vc = torch::randn({B, H, cap, D});
  // k and v as views of a fused projection's output [B, 1, (2 + 2H) D]: strided heads and batches.
  auto wide = torch::randn({B, 1, (2 + 2 * H) * D});
  auto k = wide.narrow(-1, 2 * D, H * D).view({B, 1, H, D}).transpose(1, 2);
  auto v = wide.narrow(-1, (2 + H) * D, H * D).view({B, 1, H, D}).transpose(1, 2);
  auto pos = torch::tensor({4}, torch::kInt64);
  auto want_k = kc.clone().index_copy_(2, pos, k), want_v = vc.clone().index_copy_(2, pos, v);
  ASSERT_TRUE(rtp::ops::kv_token_store_supported(kc, vc, k, v, pos));
  rtp::ops::kv_token_store(kc, vc, k, v, pos);
  EXPECT_TRUE(torch::equal(kc, want_k));
  EXPECT_TRUE(torch::equal(vc, want_v));
  auto before = kc.clone();
  rtp::ops::kv_token_store(kc, vc, k, v, torch::tensor({cap}, torch::kInt64));
  EXPECT_TRUE(torch::equal(kc, before));
  const auto err = rtp::testing::error_of([&] { rtp::ops::kv_token_store(kc, vc, k.narrow(1, 0, 2), v, pos); });
  EXPECT_NE(err.find("kv_token_store: expected"), std::string::npos) << err;
}

}  // namespace
