// Decoding through the sparse cache (ring buffers for streaming heads, full caches + index keys for retrieval
// heads) against the masked sparse forward over the whole sequence.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/model_fixtures.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/sparse_cache.h"

namespace {

struct Setup {
  rtp::model::Qwen3Model model;
  rtp::sparse::HeadMap heads;
  rtp::sparse::Indexer indexer;
};

Setup make_setup() {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  heads.retrieval[1][1] = 1;
  rtp::sparse::Indexer indexer(heads, c.head_dim, 16);
  torch::manual_seed(11);
  indexer.q_proj(1).normal_(0, 0.3);
  indexer.k_proj(1).normal_(0, 0.3);
  return {std::move(model), heads, indexer};
}

// Streaming heads read the ring, retrieval heads read everything (top_p 1): each decode step must give the
// logits the whole-sequence sparse forward gives at that position.
TEST(SparseCache, RingBufferDecodeEqualsMaskedForward) {
  auto s = make_setup();
  rtp::sparse::SparseSettings st;
  st.sink = 2;
  st.window = 8;
  st.top_p = 1.0;
  const int64_t T = 40;
  auto ids = torch::randint(0, s.model.config().vocab_size, {1, T}, torch::kInt64);
  torch::NoGradGuard no_grad;
  rtp::sparse::SparseAttention whole(s.heads, st, &s.indexer);
  rtp::model::ForwardOptions o;
  o.attention = &whole;
  auto ref = s.model.forward(ids, o);

  // Prompts shorter than the sink, exactly sink + window, and long enough that the ring has wrapped twice.
  for (const int64_t P : {int64_t{1}, int64_t{10}, int64_t{29}}) {
    rtp::sparse::SparseCache cache(s.model.config(), s.heads, st, &s.indexer, T, torch::kCPU, torch::kFloat32);
    auto first = s.model.forward(ids.narrow(1, 0, P), cache.options());
    EXPECT_LE((first - ref.narrow(1, 0, P)).abs().max().item<double>(), 1e-5) << "prompt " << P;
    for (int64_t t = P; t < T; ++t) {
      auto step = s.model.forward(ids.narrow(1, t, 1), cache.options());
      EXPECT_LE((step[0][0] - ref[0][t]).abs().max().item<double>(), 1e-4) << "prompt " << P << ", position " << t;
    }
    EXPECT_EQ(cache.length(), T);
    // The retrieval head attended every token at the last step (top_p 1 keeps all).
    EXPECT_EQ(cache.last_selected()[1][0].item<int32_t>(), T);
  }
}

TEST(SparseCache, TopPSelectsFewerTokensAndMemoryIsExact) {
  auto s = make_setup();
  rtp::sparse::SparseSettings st;
  st.sink = 2;
  st.window = 8;
  st.top_p = 0.5;
  const int64_t T = 300;
  auto ids = torch::randint(0, s.model.config().vocab_size, {1, T}, torch::kInt64);
  rtp::sparse::SparseCache cache(s.model.config(), s.heads, st, &s.indexer, T, torch::kCPU, torch::kFloat32);
  torch::NoGradGuard no_grad;
  s.model.forward(ids.narrow(1, 0, T - 1), cache.options());
  auto last = s.model.forward(ids.narrow(1, T - 1, 1), cache.options());
  EXPECT_TRUE(torch::isfinite(last).all().item<bool>());
  const int64_t sel = cache.last_selected()[1][0].item<int32_t>();
  EXPECT_LT(sel, T) << "top-p 0.5 kept every token";
  EXPECT_GE(sel, 64 + 64) << "keep_first + keep_last tokens are always kept";
  // 3 layers x 2 KV heads, D 32, fp32: 1 retrieval head keeps T x (2*32 + 16), 5 streaming heads keep 10 x 2*32.
  EXPECT_EQ(cache.bytes(), (T * (2 * 32 + 16) + 5 * 10 * 2 * 32) * 4);
  EXPECT_EQ(cache.dense_bytes(), 6 * T * 2 * 32 * 4);
  // Per layer: layer 1 holds the retrieval head.
  EXPECT_EQ(cache.layer_bytes(0), 2 * 10 * 2 * 32 * 4);
  EXPECT_EQ(cache.layer_bytes(1), (T * (2 * 32 + 16) + 10 * 2 * 32) * 4);
  EXPECT_EQ(cache.layer_bytes(2), 2 * 10 * 2 * 32 * 4);
  // The prompt's prefill pairs: streaming heads min(i + 1, 10) per query (no sink older than the window here
  // beyond the 2 sinks: min(i+1, 8) + min(2, max(0, i+1-8))), the retrieval head fewer than causal.
  const auto& ps = cache.prefill_stats();
  const int64_t P = T - 1;
  double stream = 0;
  for (int64_t i = 0; i < P; ++i) stream += std::min<int64_t>(i + 1, 8) + std::min<int64_t>(2, std::max<int64_t>(0, i + 1 - 8));
  const int64_t G = s.model.config().group_size();
  EXPECT_EQ(ps.head_attended[0][0], stream * G);
  EXPECT_EQ(ps.head_causal[1][1], P * (P + 1) / 2.0 * G);
  EXPECT_LT(ps.head_attended[1][1], ps.head_causal[1][1]);
}

}  // namespace
