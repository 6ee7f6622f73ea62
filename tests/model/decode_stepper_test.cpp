// The decode stepper (rtp/model/decode_stepper.h) splits a one-token forward at the attention calls and, on a GPU,
// replays the pieces from CUDA graphs. Here (CPU, eager pieces) its logits must equal forward()'s bit for bit, with
// the dense KV cache and with the sparse cache as attention seam; greedy generation's stop handling against a
// per-row reading of an unstopped run; the checkpoint's stop tokens.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "model/model_fixtures.h"
#include "rtp/core/file_io.h"
#include "rtp/model/decode_stepper.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/sparse_cache.h"
#include "test_util.h"

namespace {

class DecodeStepperFixtures : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeStepperFixtures, StepEqualsForwardWithCache) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir(GetParam()), torch::kCPU, torch::kFloat32);
  torch::manual_seed(5);
  const int64_t B = 2, P = 7, steps = 9;
  auto ids = torch::randint(0, model.config().vocab_size, {B, P + steps}, torch::kInt64);
  torch::NoGradGuard no_grad;
  rtp::model::KVCache ref_cache(model.config().num_hidden_layers), cache(model.config().num_hidden_layers);
  rtp::model::ForwardOptions ref_o, o;
  ref_o.cache = &ref_cache;
  o.cache = &cache;
  model.forward(ids.narrow(1, 0, P), ref_o);
  model.forward(ids.narrow(1, 0, P), o);
  rtp::model::DecodeStepper stepper(model);
  EXPECT_FALSE(stepper.uses_graphs());  // a CPU model
  // Steps with an observer take the ordinary path (cache append, then attention), the others the split one (the
  // token stored in the cache by the segments): both must give forward's logits, also when the path changes.
  int observed = 0;
  auto observer = [&](const rtp::model::LayerAttentionInputs&) { ++observed; };
  for (int64_t t = P; t < P + steps; ++t) {
    o.observer = t % 3 == 0 ? rtp::model::AttentionObserver(observer) : rtp::model::AttentionObserver();
    auto token = ids.narrow(1, t, 1);
    auto ref = model.forward(token, ref_o);
    auto got = stepper.step(token, o);
    ASSERT_EQ(got.sizes(), ref.sizes());
    EXPECT_TRUE(torch::equal(got, ref)) << GetParam() << " position " << t << ": max |diff| "
                                        << (got - ref).abs().max().item<double>();
  }
  EXPECT_EQ(cache.length(), P + steps);
  EXPECT_EQ(observed, 3 * model.config().num_hidden_layers);  // positions 9, 12, 15
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeStepperFixtures, ::testing::ValuesIn(rtp::testing::model_fixture_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

// The tiny fixture with one retrieval KV head in layer 1 (which then mixes both kinds: the cache gathers each kind's
// rows), a random indexer, and a ring of 2 sinks + 8 tokens that wraps within a few steps.
struct TinySparse {
  rtp::sparse::HeadMap heads;
  rtp::sparse::Indexer indexer;
  rtp::sparse::SparseSettings settings;
};
TinySparse tiny_sparse(const rtp::model::ModelConfig& c, int64_t retrieval_kv_head, uint64_t seed) {
  TinySparse t;
  t.heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  t.heads.retrieval[1][retrieval_kv_head] = 1;
  t.indexer = rtp::sparse::Indexer(t.heads, c.head_dim, 16);
  torch::manual_seed(seed);
  t.indexer.q_proj(1).normal_(0, 0.3);
  t.indexer.k_proj(1).normal_(0, 0.3);
  t.settings.sink = 2;
  t.settings.window = 8;
  t.settings.top_p = 0.9;
  return t;
}

TEST(DecodeStepper, StepEqualsForwardThroughTheSparseCache) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  const auto sp = tiny_sparse(c, 1, 11);
  const auto& heads = sp.heads;
  const auto& indexer = sp.indexer;
  const auto& st = sp.settings;
  const int64_t P = 150, steps = 30;  // the ring wraps during the steps
  auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64);
  torch::NoGradGuard no_grad;
  rtp::sparse::SparseCache ref_cache(c, heads, st, &indexer, P + steps, torch::kCPU, torch::kFloat32);
  rtp::sparse::SparseCache cache(c, heads, st, &indexer, P + steps, torch::kCPU, torch::kFloat32);
  model.forward(ids.narrow(1, 0, P), ref_cache.options());
  model.forward(ids.narrow(1, 0, P), cache.options());
  rtp::model::DecodeStepper stepper(model);
  for (int64_t t = P; t < P + steps; ++t) {
    auto ref = model.forward(ids.narrow(1, t, 1), ref_cache.options());
    auto got = stepper.step(ids.narrow(1, t, 1), cache.options());
    EXPECT_TRUE(torch::equal(got, ref)) << "position " << t << ": max |diff| " << (got - ref).abs().max().item<double>();
    EXPECT_TRUE(torch::equal(cache.last_selected()[1], ref_cache.last_selected()[1])) << "position " << t;
  }
  EXPECT_EQ(cache.length(), P + steps);
}

// An eval reuses one cache and one stepper for its samples: a cleared cache (a shorter prompt this time) must decode
// as a new one does, dense and sparse.
TEST(DecodeStepper, AClearedCacheDecodesLikeANewOne) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  const auto sp = tiny_sparse(c, 0, 13);
  const auto& heads = sp.heads;
  const auto& indexer = sp.indexer;
  const auto& st = sp.settings;
  const int64_t steps = 12;
  auto first = torch::randint(0, c.vocab_size, {1, 90 + steps}, torch::kInt64);
  auto second = torch::randint(0, c.vocab_size, {1, 61 + steps}, torch::kInt64);
  torch::NoGradGuard no_grad;
  rtp::model::KVCache dense(c.num_hidden_layers);
  dense.reserve(90 + steps);
  rtp::sparse::SparseCache sparse(c, heads, st, &indexer, 90 + steps, torch::kCPU, torch::kFloat32);
  rtp::model::DecodeStepper dense_stepper(model), sparse_stepper(model);
  auto run = [&](const torch::Tensor& ids, int64_t P) {
    rtp::model::ForwardOptions o;
    o.cache = &dense;
    model.forward(ids.narrow(1, 0, P), o);
    model.forward(ids.narrow(1, 0, P), sparse.options());
    std::vector<torch::Tensor> out;
    for (int64_t t = P; t < P + steps; ++t) {
      out.push_back(dense_stepper.step(ids.narrow(1, t, 1), o).clone());
      out.push_back(sparse_stepper.step(ids.narrow(1, t, 1), sparse.options()).clone());
    }
    return out;
  };
  run(first, 90);
  dense.clear();
  sparse.clear();
  EXPECT_EQ(dense.length(), 0);
  EXPECT_EQ(sparse.length(), 0);
  EXPECT_EQ(dense.bytes(), 0);
  const auto reused = run(second, 61);
  // The reference: new caches and steppers for the second prompt.
  rtp::model::KVCache fresh_dense(c.num_hidden_layers);
  rtp::sparse::SparseCache fresh_sparse(c, heads, st, &indexer, 61 + steps, torch::kCPU, torch::kFloat32);
  rtp::model::ForwardOptions fo;
  fo.cache = &fresh_dense;
  model.forward(second.narrow(1, 0, 61), fo);
  model.forward(second.narrow(1, 0, 61), fresh_sparse.options());
  for (int64_t i = 0; i < steps; ++i) {
    const auto token = second.narrow(1, 61 + i, 1);
    EXPECT_TRUE(torch::equal(reused[2 * i], model.forward(token, fo))) << "dense step " << i;
    EXPECT_TRUE(torch::equal(reused[2 * i + 1], model.forward(token, fresh_sparse.options()))) << "sparse step " << i;
  }
  EXPECT_EQ(sparse.bytes(), fresh_sparse.bytes());
  EXPECT_EQ(sparse.prefill_stats().attended_pairs, fresh_sparse.prefill_stats().attended_pairs);
}

TEST(DecodeStepper, HostIdsAreRangeChecked) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  rtp::model::KVCache cache(model.config().num_hidden_layers);
  rtp::model::ForwardOptions o;
  o.cache = &cache;
  model.forward(torch::zeros({1, 3}, torch::kInt64), o);
  rtp::model::DecodeStepper stepper(model);
  const auto bad = torch::full({1, 1}, model.config().vocab_size, torch::kInt64);
  EXPECT_NE(rtp::testing::error_of([&] { stepper.step(bad, o); }).find("input_ids must lie in [0, "), std::string::npos);
  EXPECT_NE(rtp::testing::error_of([&] { stepper.step(torch::zeros({1, 2}, torch::kInt64), o); }).find("[B, 1]"),
            std::string::npos);
  // A forward names the range it found, below and above the vocabulary.
  const int64_t V = model.config().vocab_size;
  const auto ids = [](std::vector<int64_t> v) { return torch::tensor(v, torch::kInt64).unsqueeze(0); };
  const auto below = ids({3, -2, 5}), above = ids({0, V, V + 7});
  EXPECT_NE(rtp::testing::error_of([&] { model.forward(below, {}); })
                .find("input_ids must lie in [0, " + std::to_string(V) + "), found values in [-2, 5]"),
            std::string::npos);
  EXPECT_NE(rtp::testing::error_of([&] { model.forward(above, {}); })
                .find("found values in [0, " + std::to_string(V + 7) + "]"),
            std::string::npos);
  EXPECT_EQ(rtp::testing::error_of([&] { model.forward(ids({0, V - 1}), {}); }),
            "<no error: the call succeeded>");
}

// Two sequences that stop at different steps: each row is the unstopped run up to its first stop token, then that
// token repeated; the result ends where the later row stopped. The stopping run only checks every few tokens.
TEST(DecodeStepper, GreedyStopsPerRowAndCutsAfterTheLastStop) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  torch::manual_seed(3);
  const int64_t P = 5, N = 20;
  auto prompt = torch::randint(0, model.config().vocab_size, {2, P}, torch::kInt64);
  auto free_run = rtp::model::generate_greedy(model, prompt, N);
  ASSERT_EQ(free_run.size(1), P + N);
  // Stop tokens: row 0's 2nd generated token and row 1's 11th; the first occurrence in each row counts.
  const std::vector<int64_t> stops = {free_run[0][P + 1].item<int64_t>(), free_run[1][P + 10].item<int64_t>()};
  auto first_stop = [&](int64_t row) {
    for (int64_t t = P; t < P + N; ++t)
      for (int64_t s : stops)
        if (free_run[row][t].item<int64_t>() == s) return t;
    return P + N;
  };
  const int64_t f0 = first_stop(0), f1 = first_stop(1), end = std::max(f0, f1) + 1;
  auto stopped = rtp::model::generate_greedy(model, prompt, N, stops);
  ASSERT_EQ(stopped.size(1), end);
  for (int64_t row = 0; row < 2; ++row) {
    const int64_t f = row == 0 ? f0 : f1;
    for (int64_t t = 0; t < end; ++t) {
      const int64_t expected = free_run[row][std::min(t, f)].item<int64_t>();
      EXPECT_EQ(stopped[row][t].item<int64_t>(), expected) << "row " << row << " position " << t;
    }
  }
}

TEST(DecodeStepper, StopTokensComeFromTheCheckpoint) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("rtp_stop_tokens_test_" + std::to_string(::getpid()));
  rtp::make_directories(dir.string());
  auto write = [&](const std::string& name, const std::string& text) { std::ofstream(dir / name) << text; };
  EXPECT_TRUE(rtp::model::load_stop_token_ids(dir.string()).empty());
  write("config.json", R"({"eos_token_id": 7})");
  EXPECT_EQ(rtp::model::load_stop_token_ids(dir.string()), (std::vector<int64_t>{7}));
  write("generation_config.json", R"({"eos_token_id": [151645, 151643]})");
  EXPECT_EQ(rtp::model::load_stop_token_ids(dir.string()), (std::vector<int64_t>{151645, 151643}));
  write("generation_config.json", R"({"eos_token_id": "</s>"})");
  const auto err = rtp::testing::error_of([&] { rtp::model::load_stop_token_ids(dir.string()); });
  EXPECT_NE(err.find("generation_config.json': eos_token_id must be a token id or a list"), std::string::npos) << err;
  rtp::remove_tree(dir.string());  // not fs::remove_all: it crashes next to libtorch
}

}  // namespace
