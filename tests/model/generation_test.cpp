// KV cache, chunked prefill and greedy generation against references made by HF transformers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/model_fixtures.h"
#include "test_util.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"

namespace {

class Generation : public ::testing::TestWithParam<std::string> {};

TEST_P(Generation, GreedyTokensMatchTransformers) {
  const std::string dir = rtp::testing::model_fixture_dir(GetParam());
  torch::Tensor prompt, expected;
  for (auto& [n, t] : rtp::read_all_tensors(dir + "/generation.safetensors")) {
    if (n == "prompt_ids") prompt = t;
    if (n == "output_ids") expected = t;
  }
  ASSERT_TRUE(prompt.defined() && expected.defined());
  auto model = rtp::model::load_qwen3(dir, torch::kCPU, torch::kFloat32);
  const int64_t new_tokens = expected.size(1) - prompt.size(1);
  for (int64_t chunk : {int64_t(4096), int64_t(5)}) {
    auto out = rtp::model::generate_greedy(model, prompt, new_tokens, {}, chunk);
    EXPECT_TRUE(torch::equal(out, expected)) << "prefill chunk " << chunk << "\nours " << out << "\nHF " << expected;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Generation, ::testing::ValuesIn(rtp::testing::model_fixture_names()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (auto& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(KVCache, ChunkedPrefillEqualsOneShot) {
  torch::manual_seed(40);  // the random ids: the same in every run, whatever ran before
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-moe-tiny"), torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, model.config().vocab_size, {2, 45}, torch::kInt64);
  torch::NoGradGuard no_grad;
  auto whole = model.forward(ids);
  for (int64_t chunk : {1, 7, 16}) {
    rtp::model::KVCache cache(model.config().num_hidden_layers);
    rtp::model::ForwardOptions o;
    o.cache = &cache;
    std::vector<torch::Tensor> parts;
    for (int64_t c = 0; c < ids.size(1); c += chunk)
      parts.push_back(model.forward(ids.narrow(1, c, std::min(chunk, ids.size(1) - c)), o));
    auto chunked = torch::cat(parts, 1);
    EXPECT_LE((chunked - whole).abs().max().item<double>(), 1e-4) << "chunk " << chunk;
    EXPECT_EQ(cache.length(), ids.size(1));
    // k and v of every layer: [B, Hkv, T, D] floats.
    const auto& c = model.config();
    EXPECT_EQ(cache.bytes(), 2 * c.num_hidden_layers * 2 * c.num_key_value_heads * ids.size(1) * c.head_dim * 4);
    // prefill_chunked: the LM head for the last position only, the one-shot forward's last row.
    rtp::model::KVCache again(model.config().num_hidden_layers);
    auto next = rtp::model::prefill_chunked(model, again, ids, chunk);
    ASSERT_EQ(next.sizes(), torch::IntArrayRef({2, 1, c.vocab_size}));
    EXPECT_LE((next - whole.narrow(1, ids.size(1) - 1, 1)).abs().max().item<double>(), 1e-4) << "chunk " << chunk;
    EXPECT_EQ(again.length(), ids.size(1));
  }
  // And a single forward with last_position_logits, without a cache.
  rtp::model::ForwardOptions last;
  last.last_position_logits = true;
  auto one = model.forward(ids, last);
  ASSERT_EQ(one.size(1), 1);
  EXPECT_LE((one - whole.narrow(1, ids.size(1) - 1, 1)).abs().max().item<double>(), 1e-5);
}

TEST(Generation, StopTokenEndsASequence) {
  torch::manual_seed(61);  // the random prompt: the same in every run, whatever ran before
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  auto prompt = torch::randint(0, model.config().vocab_size, {1, 9}, torch::kInt64);
  auto free_run = rtp::model::generate_greedy(model, prompt, 12);
  const int64_t stop = free_run[0][9 + 3].item<int64_t>();  // the 4th generated token
  auto stopped = rtp::model::generate_greedy(model, prompt, 12, {stop});
  // Generation ends at the first occurrence of the stop token, which is kept.
  int64_t first = -1;
  for (int64_t t = 9; t < free_run.size(1); ++t)
    if (free_run[0][t].item<int64_t>() == stop) {
      first = t;
      break;
    }
  ASSERT_GE(first, 9);
  EXPECT_EQ(stopped.size(1), first + 1);
  EXPECT_TRUE(torch::equal(stopped, free_run.narrow(1, 0, first + 1)));
}

}  // namespace

// The cache writes tokens into per-layer buffers in place (growing them when full, or sized up front by reserve):
// what it returns must be exactly the concatenation of everything appended.
TEST(KVCache, InPlaceBuffersHoldWhatWasAppended) {
  torch::manual_seed(6);
  for (const int64_t reserve : {int64_t{0}, int64_t{11}, int64_t{40}}) {
    rtp::model::KVCache cache(2);
    cache.reserve(reserve);
    std::vector<torch::Tensor> ks, vs;
    for (const int64_t T : {3, 1, 1, 5, 1, 7, 1}) {
      auto k = torch::randn({2, 3, T, 4}), v = torch::randn({2, 3, T, 4});
      ks.push_back(k), vs.push_back(v);
      auto [kc, vc] = cache.append(1, k, v);
      EXPECT_TRUE(torch::equal(kc, torch::cat(ks, 2))) << "reserve " << reserve;
      EXPECT_TRUE(torch::equal(vc, torch::cat(vs, 2))) << "reserve " << reserve;
    }
    EXPECT_EQ(cache.bytes(), 2 * 2 * 3 * 19 * 4 * 4);
    EXPECT_GE(cache.reserved_bytes(), cache.bytes());
    if (reserve >= 19) EXPECT_EQ(cache.reserved_bytes(), 2 * 2 * 3 * reserve * 4 * 4);
    const auto err = rtp::testing::error_of([&] { cache.append(1, torch::randn({1, 3, 1, 4}), torch::randn({1, 3, 1, 4})); });
    EXPECT_NE(err.find("KV cache: layer 1 holds [2, 3, *, 4], appended [1, 3, 1, 4]"), std::string::npos) << err;
  }
}

// The decode stepper's split path: tokens stored at a device position, attention over the filled part; the token
// begin_step hands out changes exactly when the buffers move (the graphs that write to them must then be redone).
TEST(KVCache, StepStoresTokensWhereAppendWouldAndSaysWhenBuffersMove) {
  torch::manual_seed(8);
  rtp::model::KVCache cache(2), ref(2);
  EXPECT_EQ(cache.begin_step(0), nullptr);  // nothing appended: the buffers' shapes are unknown
  const int64_t B = 2, H = 2, G = 3, D = 8, P = 4;
  auto k0 = torch::randn({B, H, P, D}), v0 = torch::randn({B, H, P, D});
  for (int64_t l = 0; l < 2; ++l) cache.append(l, k0, v0), ref.append(l, k0, v0);
  cache.advance(P), ref.advance(P);
  std::shared_ptr<const void> last;
  int moves = 0;
  for (int64_t pos = P; pos < P + 9; ++pos) {
    auto token = cache.begin_step(pos);
    ASSERT_NE(token, nullptr);
    if (token != last) ++moves;
    last = token;
    for (int64_t l = 0; l < 2; ++l) {
      rtp::model::LayerAttentionInputs in;
      in.layer = l;
      in.q = torch::randn({B, H * G, 1, D}), in.k = torch::randn({B, H, 1, D}), in.v = torch::randn({B, H, 1, D});
      in.scale = 0.3;
      cache.store_token(in, torch::full({1}, pos, torch::kInt64));
      auto out = torch::empty({B, H * G, 1, D});
      cache.attend_token(in, pos, out);
      auto [rk, rv] = ref.append(l, in.k, in.v);
      // The reference: attention written out over the appended cache (softmax of the scaled scores, GQA by hand).
      auto kk = rk.repeat_interleave(G, 1), vv = rv.repeat_interleave(G, 1);
      auto p = torch::softmax(torch::matmul(in.q, kk.transpose(-1, -2)) * in.scale, -1);
      EXPECT_LT((out - torch::matmul(p, vv)).abs().max().item<double>(), 1e-5) << "layer " << l << " position " << pos;
    }
    cache.advance(1), ref.advance(1);
  }
  // Prefill of 4 without a reservation: room for 4, grown to 6, 9 and 13 by the steps: three sets of buffers.
  EXPECT_EQ(moves, 3);
  EXPECT_EQ(cache.length(), P + 9);
  EXPECT_EQ(cache.bytes(), ref.bytes());
  EXPECT_NE(rtp::testing::error_of([&] { cache.begin_step(3); }).find("a decode step at position 3 of a cache holding 13"),
            std::string::npos);
}
