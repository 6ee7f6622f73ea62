// The decode-token store's CPU reference (rtp/kernels/sparse_token_store.h) against index copies and matrix-vector
// products in float64 (sparse_token_store_case.h); every cache element outside the token's rows left as it was;
// parameter errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "rtp/kernels/sparse_token_store.h"
#include "rtp/ops/sparse_token_store.h"
#include "sparse_token_store_case.h"
#include "test_util.h"

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

// The CPU reference writes at row slot x capacity + position (+ ring_slot) unchecked, so ops::sparse_token_store
// refuses, on the CPU, a position outside [0, full_capacity) or a ring slot outside [0, ring_capacity), naming it.
// The caches here are views one head into buffers two heads longer: a write the op let through lands in that
// padding (caught below) instead of outside any allocation.
TEST(SparseTokenStoreRef, OpRefusesAPositionOrRingSlotOutsideTheCaches) {
  rtp::testing::TokenStoreCase c(23);
  const auto padded = [](const torch::Tensor& t) {
    auto sizes = t.sizes().vec();
    sizes[0] += 2;
    auto buffer = torch::zeros(sizes);
    buffer.narrow(0, 1, t.size(0)).copy_(t);
    return buffer;
  };
  const std::vector<torch::Tensor> buffers = {padded(c.full_k), padded(c.full_v), padded(c.index_keys),
                                              padded(c.index_q), padded(c.ring_k), padded(c.ring_v)};
  std::vector<torch::Tensor> caches;
  for (const auto& b : buffers) caches.push_back(b.narrow(0, 1, b.size(0) - 2));
  const auto k = c.k(), v = c.v();
  int64_t position = c.position, ring_slot = c.ring_slot;
  const auto p = c.params(k, v, c.ksrc, c.qsrc, c.kw, c.qw, caches, &position, &ring_slot);
  const auto before = std::vector<torch::Tensor>{buffers[0].clone(), buffers[1].clone(), buffers[2].clone(),
                                                 buffers[3].clone(), buffers[4].clone(), buffers[5].clone()};
  const auto unchanged = [&] {
    for (size_t i = 0; i < buffers.size(); ++i)
      if (!torch::equal(buffers[i], before[i])) return false;
    return true;
  };
  for (const int64_t bad : {c.cap, c.cap + 5, int64_t(-1)}) {
    position = bad, ring_slot = c.ring_slot;
    const auto err = rtp::testing::error_of([&] { rtp::ops::sparse_token_store(p, torch::kCPU); });
    EXPECT_NE(err.find("sparse token store: position must be in [0, full_capacity = 11)"), std::string::npos)
        << "position " << bad << ": " << err;
    EXPECT_TRUE(unchanged()) << "position " << bad << " wrote into the buffers";
  }
  for (const int64_t bad : {c.ring_cap, int64_t(-1)}) {
    position = c.position, ring_slot = bad;
    const auto err = rtp::testing::error_of([&] { rtp::ops::sparse_token_store(p, torch::kCPU); });
    EXPECT_NE(err.find("sparse token store: ring_slot must be in [0, ring_capacity = 6)"), std::string::npos)
        << "ring_slot " << bad << ": " << err;
    EXPECT_TRUE(unchanged()) << "ring_slot " << bad << " wrote into the buffers";
  }
  // In range: the op stores as the reference does, inside the caches only.
  position = c.position, ring_slot = c.ring_slot;
  rtp::ops::sparse_token_store(p, torch::kCPU);
  const auto want = c.expected(k, v, c.ksrc, c.qsrc, c.kw, c.qw);
  for (size_t i = 0; i < caches.size(); ++i) {
    EXPECT_LE((caches[i].to(torch::kFloat64) - want[i]).abs().max().item<double>(), 1e-5) << i;
    EXPECT_TRUE(torch::equal(buffers[i].narrow(0, 0, 1), before[i].narrow(0, 0, 1)) &&
                torch::equal(buffers[i].narrow(0, buffers[i].size(0) - 1, 1),
                             before[i].narrow(0, before[i].size(0) - 1, 1)))
        << "the store wrote outside cache " << i;
  }
}

}  // namespace
