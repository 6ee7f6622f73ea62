// The decode-token store's CPU reference (rtp/kernels/sparse_token_store.h) against index copies and matrix-vector
// products in float64 (sparse_token_store_case.h); every cache element outside the token's rows left as it was;
// parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "rtp/kernels/sparse_token_store.h"
#include "sparse_token_store_case.h"

namespace {

TEST(SparseTokenStoreRef, WritesTheRowsAndIndexProjectionsAndNothingElse) {
  rtp::testing::TokenStoreCase c(21);
  std::vector<torch::Tensor> caches = {c.full_k.clone(), c.full_v.clone(), c.index_keys.clone(),
                                       c.index_q.clone(), c.ring_k.clone(),  c.ring_v.clone()};
  const auto k = c.k(), v = c.v();
  auto p = c.params(k, v, c.ksrc, c.qsrc, c.kw, c.qw, caches, &c.position, &c.ring_slot);
  ASSERT_STREQ(rtp::kernels::check_sparse_token_store_params(p, false), "");
  rtp::kernels::sparse_token_store_cpu(p);
  const auto want = c.expected(k, v, c.ksrc, c.qsrc, c.kw, c.qw);
  const char* names[] = {"full_k", "full_v", "index_keys", "index_q", "ring_k", "ring_v"};
  for (size_t i = 0; i < caches.size(); ++i)
    EXPECT_LE((caches[i].to(torch::kFloat64) - want[i]).abs().max().item<double>(), 1e-5) << names[i];
  // The rows copied are bit-exact, and the store changed something in every buffer.
  EXPECT_TRUE(torch::equal(caches[0][1][c.position], k[2]));
  EXPECT_TRUE(torch::equal(caches[5][1][c.ring_slot], v[3]));
  const torch::Tensor before[] = {c.full_k, c.full_v, c.index_keys, c.index_q, c.ring_k, c.ring_v};
  for (size_t i = 0; i < caches.size(); ++i) EXPECT_FALSE(torch::equal(caches[i], before[i])) << names[i];
}

TEST(SparseTokenStoreRef, RejectsBadParameters) {
  rtp::testing::TokenStoreCase c(22);
  std::vector<torch::Tensor> caches = {c.full_k, c.full_v, c.index_keys, c.index_q, c.ring_k, c.ring_v};
  const auto k = c.k(), v = c.v();
  const auto base = c.params(k, v, c.ksrc, c.qsrc, c.kw, c.qw, caches, &c.position, &c.ring_slot);
  const auto error = [](const rtp::kernels::SparseTokenStoreParams& p) {
    return std::string(rtp::kernels::check_sparse_token_store_params(p, false));
  };
  auto p = base;
  p.kv_heads = 33;
  EXPECT_NE(error(p).find("kv_heads"), std::string::npos);
  p = base;
  p.streaming_slot_of[0] = 0;  // head 0 also retrieval
  EXPECT_NE(error(p).find("exactly one"), std::string::npos);
  p = base;
  p.retrieval_slot_of[2] = 0;  // two heads in slot 0
  EXPECT_NE(error(p).find("distinct"), std::string::npos);
  p = base;
  p.retrieval_slot_of[2] = 2;  // slots 0 and 2: a gap
  EXPECT_NE(error(p).find("without gaps"), std::string::npos);
  p = base;
  p.index_q_weight = nullptr;
  EXPECT_NE(error(p).find("indexer weights"), std::string::npos);
  p = base;
  p.ring_slot = nullptr;
  EXPECT_NE(error(p).find("ring_slot"), std::string::npos);
  p = base;
  p.dtype = rtp::kernels::DType::BF16;
  EXPECT_NE(error(p).find("float32 only"), std::string::npos);
  EXPECT_EQ(error(base), "");
}

}  // namespace
