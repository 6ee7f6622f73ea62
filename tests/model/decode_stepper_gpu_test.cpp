// The decode stepper on a GPU: the steps replayed from CUDA graphs must give the logits forward() gives for the same
// token, with the dense KV cache (HF fixtures) and with the sparse cache and its CUDA decode kernel (a random model
// with head_dim 128), and the same tokens selected; MoE models through the experts-by-id kernels. And the dense
// decode attention itself (FlashAttention through libtorch) against a float64 reference. With head_dim 64 / 128 in
// bf16 the dense cache's steps attend through the CUDA decode kernel inside the one graph of a step: equal to the
// same steps without graphs, close to forward's (FlashAttention).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <string>

#include "model/model_fixtures.h"
#include "rtp/model/decode_stepper.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/sparse_cache.h"

namespace {

const torch::Device kCuda(torch::kCUDA, 0);

double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// A small random Qwen3 whose attention takes the CUDA decode kernels (head_dim 64 or 128).
rtp::model::ModelConfig small_config(int64_t layers, int64_t query_heads, int64_t kv_heads, int64_t head_dim) {
  rtp::model::ModelConfig c;
  c.vocab_size = 503;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_hidden_layers = layers;
  c.num_attention_heads = query_heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.rope_theta = 10000.0;
  return c;
}

// A bf16 4-layer model on the GPU with layers of streaming heads only, of both kinds (layer 1) and of retrieval heads
// only (layer 2), an indexer with random weights and sparse settings (sink 4, top-p 0.9, the given window): built in
// this order, the model from model_seed, the indexer's weights from indexer_seed.
struct MixedHeadsModel {
  rtp::model::ModelConfig c = small_config(4, 4, 2, 128);
  std::unique_ptr<rtp::model::Qwen3Model> model;
  rtp::sparse::HeadMap heads;
  std::unique_ptr<rtp::sparse::Indexer> indexer;
  rtp::sparse::SparseSettings settings;
  MixedHeadsModel(uint64_t model_seed, uint64_t indexer_seed, int64_t window) {
    model = std::make_unique<rtp::model::Qwen3Model>(c, kCuda, torch::kBFloat16);
    model->init_random(model_seed, 0.05);
    heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
    heads.retrieval[1][1] = 1;
    heads.retrieval[2][0] = heads.retrieval[2][1] = 1;
    indexer = std::make_unique<rtp::sparse::Indexer>(heads, c.head_dim, 16);
    indexer->to(kCuda, torch::kBFloat16);
    torch::manual_seed(indexer_seed);
    for (const auto& [name, t] : indexer->named_parameters()) t.normal_(0, 0.2);
    settings.sink = 4;
    settings.window = window;
    settings.top_p = 0.9;
  }
};

// Two dense KV caches holding the same prompt, for decoding it one way through `a` and another through `b`.
struct TwinCaches {
  rtp::model::KVCache cache_a, cache_b;
  rtp::model::ForwardOptions a, b;
  TwinCaches(rtp::model::Qwen3Model& model, const torch::Tensor& prompt)
      : cache_a(model.config().num_hidden_layers), cache_b(model.config().num_hidden_layers) {
    a.cache = &cache_a;
    b.cache = &cache_b;
    model.forward(prompt, a);
    model.forward(prompt, b);
  }
  TwinCaches(const TwinCaches&) = delete;  // a and b point into it
  TwinCaches& operator=(const TwinCaches&) = delete;
};

// The prompt ids[:, :P] in two caches, then `steps` tokens decoded through each, the model's epilogues `with` for
// the first and `without` for the second, alternating graph replay (even positions) and eager forwards: the largest
// |logit difference| and the largest |logit| of the second.
struct TwinDecodeDiff {
  double worst = 0, scale = 0;
};
// The same, with the model set up by set_a before each of a's steps and by set_b before b's.
TwinDecodeDiff decode_twins(rtp::model::Qwen3Model& model, const torch::Tensor& ids, int64_t P, int64_t steps,
                            const std::function<void()>& set_a, const std::function<void()>& set_b) {
  torch::NoGradGuard no_grad;
  TwinCaches twin(model, ids.narrow(1, 0, P));
  rtp::model::DecodeStepper a_stepper(model), b_stepper(model);
  TwinDecodeDiff d;
  for (int64_t t = P; t < P + steps; ++t) {
    const bool graphs = t % 2 == 0;
    const auto token = ids.narrow(1, t, 1);
    set_a();
    auto a = (graphs ? a_stepper.step(token, twin.a) : model.forward(token, twin.a)).clone();
    set_b();
    auto b = (graphs ? b_stepper.step(token, twin.b) : model.forward(token, twin.b)).clone();
    d.worst = std::max(d.worst, max_diff(a, b));
    d.scale = std::max(d.scale, b.abs().max().item<double>());
  }
  return d;
}

TwinDecodeDiff decode_with_and_without(rtp::model::Qwen3Model& model, const torch::Tensor& ids, int64_t P,
                                       int64_t steps, const rtp::model::Qwen3Model::GemvEpilogues& with,
                                       const rtp::model::Qwen3Model::GemvEpilogues& without) {
  const auto d = decode_twins(
      model, ids, P, steps, [&] { model.set_gemv_epilogues(with); }, [&] { model.set_gemv_epilogues(without); });
  model.set_gemv_epilogues({});
  return d;
}

class DecodeStepperCuda : public ::testing::TestWithParam<std::string> {};

TEST_P(DecodeStepperCuda, GraphReplayEqualsForward) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: decode graphs are tested on the GPU machine";
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir(GetParam()), kCuda, torch::kBFloat16);
  const bool moe = model.config().is_moe();
  torch::manual_seed(5);
  const int64_t B = 2, P = 11, steps = 12;
  auto ids = torch::randint(0, model.config().vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
  torch::NoGradGuard no_grad;
  rtp::model::KVCache ref_cache(model.config().num_hidden_layers), cache(model.config().num_hidden_layers);
  rtp::model::ForwardOptions ref_o, o;
  ref_o.cache = &ref_cache;
  o.cache = &cache;
  model.forward(ids.narrow(1, 0, P), ref_o);
  model.forward(ids.narrow(1, 0, P), o);
  rtp::model::DecodeStepper stepper(model);
  EXPECT_TRUE(stepper.uses_graphs());
  double worst = 0;
  for (int64_t t = P; t < P + steps; ++t) {
    auto ref = model.forward(ids.narrow(1, t, 1), ref_o);
    auto got = stepper.step(ids.narrow(1, t, 1), o).clone();
    worst = std::max(worst, max_diff(got, ref));
    EXPECT_TRUE(torch::equal(got, ref)) << GetParam() << " position " << t << ": max |diff| " << max_diff(got, ref);
  }
  EXPECT_TRUE(stepper.graphed());  // MoE too: two sequences take the experts-by-id kernels
  // The cache had no reservation: its buffers grew from 11 tokens to 16 and to 24 during the steps, and the graphs,
  // which store each token in them, were captured for each.
  EXPECT_EQ(stepper.captures(), 2);
  std::cout << GetParam() << (moe ? " (MoE)" : "") << ": max |logit diff| against forward " << worst << "\n";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeStepperCuda, ::testing::ValuesIn(rtp::testing::model_fixture_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n) if (ch == '-') ch = '_';
                           return n;
                         });

TEST(DecodeStepperCuda, GraphReplayEqualsForwardThroughTheSparseCache) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: decode graphs are tested on the GPU machine";
  MixedHeadsModel s(7, 11, /*window=*/64);
  const auto& c = s.c;
  auto& model = *s.model;
  const auto& heads = s.heads;
  auto& indexer = *s.indexer;
  const auto& st = s.settings;
  const int64_t P = 333, steps = 40;  // an odd prompt; the ring wraps during the steps
  auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
  torch::NoGradGuard no_grad;
  rtp::sparse::SparseCache ref_cache(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
  rtp::sparse::SparseCache cache(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
  model.forward(ids.narrow(1, 0, P), ref_cache.options());
  model.forward(ids.narrow(1, 0, P), cache.options());
  rtp::model::DecodeStepper stepper(model);
  ASSERT_TRUE(stepper.uses_graphs());
  double worst = 0;
  int64_t selected = 0;
  for (int64_t t = P; t < P + steps; ++t) {
    auto ref = model.forward(ids.narrow(1, t, 1), ref_cache.options());
    auto got = stepper.step(ids.narrow(1, t, 1), cache.options()).clone();
    worst = std::max(worst, max_diff(got, ref));
    EXPECT_TRUE(torch::equal(got, ref)) << "position " << t << ": max |diff| " << max_diff(got, ref);
    for (int64_t l : {1, 2}) {
      EXPECT_TRUE(torch::equal(cache.last_selected()[l], ref_cache.last_selected()[l])) << "layer " << l << " position " << t;
      selected += cache.last_selected()[l].sum().item<int64_t>();
    }
  }
  EXPECT_TRUE(stepper.graphed());
  EXPECT_TRUE(stepper.attention_in_graph());  // the decode kernels read the length on the device: one graph per step
  EXPECT_EQ(cache.length(), P + steps);
  // The same stepper on a new cache (other buffers, perhaps at the old cache's addresses): its graphs are captured
  // again, and the steps still equal forward's.
  {
    const int64_t P2 = 200;
    rtp::sparse::SparseCache ref2(c, heads, st, &indexer, P2 + 8, kCuda, torch::kBFloat16);
    rtp::sparse::SparseCache cache2(c, heads, st, &indexer, P2 + 8, kCuda, torch::kBFloat16);
    model.forward(ids.narrow(1, 0, P2), ref2.options());
    model.forward(ids.narrow(1, 0, P2), cache2.options());
    for (int64_t t = P2; t < P2 + 8; ++t) {
      auto ref = model.forward(ids.narrow(1, t, 1), ref2.options());
      auto got = stepper.step(ids.narrow(1, t, 1), cache2.options()).clone();
      EXPECT_TRUE(torch::equal(got, ref)) << "second cache, position " << t << ": max |diff| " << max_diff(got, ref);
    }
    EXPECT_EQ(stepper.captures(), 2);
    // Cleared and refilled with a shorter prompt (as the eval reuses its cache): the same graphs, forward's logits.
    cache2.clear();
    const int64_t P3 = 150;
    rtp::sparse::SparseCache ref3(c, heads, st, &indexer, P3 + 8, kCuda, torch::kBFloat16);
    model.forward(ids.narrow(1, 7, P3), ref3.options());
    model.forward(ids.narrow(1, 7, P3), cache2.options());
    for (int64_t t = 7 + P3; t < 7 + P3 + 8; ++t) {
      auto ref = model.forward(ids.narrow(1, t, 1), ref3.options());
      auto got = stepper.step(ids.narrow(1, t, 1), cache2.options()).clone();
      EXPECT_TRUE(torch::equal(got, ref)) << "cleared cache, position " << t << ": max |diff| " << max_diff(got, ref);
    }
    EXPECT_EQ(stepper.captures(), 2);
  }
  std::cout << "sparse cache through graphs: max |logit diff| against forward " << worst << ", tokens selected per "
            << "retrieval head and step " << static_cast<double>(selected) / (3.0 * steps) << " of " << P + steps / 2 << "\n";
}

// The sparse cache's chunked prefill on a GPU (the CUDA selection and attention per chunk, the ring written for all
// streaming heads at once, the retrieval heads' pair counts summed on the device) against the kernel-free one-shot
// prefill (SparseAttention with use_kernels off: masked SDPA over the reference block lists). bf16 error grows along
// the sequence in this random model (the one-shot kernels differ from the reference by up to ~0.19 of 2.7 at position
// 999, the chunked prefill by about as much, both identical to it over the first block), so the chunked prefill is held
// to twice the one-shot kernel path's own error, at every 37th position and at the next-token logits; the attended
// fraction within 2% of the one-shot's (index keys projected per chunk may round differently at the top-p cut); decode
// steps from either cache within twice that error of each other.
TEST(DecodeStepperCuda, SparseChunkedPrefillMatchesTheOneShotPrefill) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the sparse chunked prefill is tested on the GPU machine";
  MixedHeadsModel s(8, 12, /*window=*/100);
  const auto& c = s.c;
  auto& model = *s.model;
  const auto& heads = s.heads;
  auto& indexer = *s.indexer;
  const auto& st = s.settings;
  const int64_t P = 1000, steps = 6;
  auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
  torch::NoGradGuard no_grad;
  rtp::sparse::SparseAttention reference(heads, st, &indexer);
  reference.use_kernels = false;
  rtp::model::ForwardOptions ro;
  ro.attention = &reference;
  const auto ref = model.forward(ids.narrow(1, 0, P), ro);  // [1, P, V]
  rtp::sparse::SparseCache one(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
  const auto one_shot = model.forward(ids.narrow(1, 0, P), one.options());
  const auto positions = torch::arange(0, P, 37, torch::TensorOptions(torch::kInt64).device(kCuda));
  const double noise = max_diff(one_shot.index_select(1, positions), ref.index_select(1, positions));
  const double last_noise = max_diff(one_shot.narrow(1, P - 1, 1), ref.narrow(1, P - 1, 1));
  const double ulp = 1.0 / 64;  // bf16 spacing of logits in [2, 4)
  for (const int64_t chunk : {128, 256}) {
    rtp::sparse::SparseCache cache(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
    cache.begin_prompt(P);
    std::vector<torch::Tensor> parts;
    for (int64_t s0 = 0; s0 < P; s0 += chunk)
      parts.push_back(model.forward(ids.narrow(1, s0, std::min(chunk, P - s0)), cache.options()));
    const auto chunked = torch::cat(parts, 1);
    const double err = max_diff(chunked.index_select(1, positions), ref.index_select(1, positions));
    EXPECT_LE(err, 2 * noise + ulp) << "chunk " << chunk;
    // The helper: the next-token logits only (its one-row LM head on the GEMV, the forward's rows on cuBLAS: the same
    // hidden state, each logit rounded to bf16 after sums in another order, so within one bf16 step).
    rtp::sparse::SparseCache helper_cache(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
    const auto next = rtp::sparse::prefill_chunked(model, helper_cache, ids.narrow(1, 0, P), chunk);
    ASSERT_EQ(next.size(1), 1);
    EXPECT_LE(max_diff(next, chunked.narrow(1, P - 1, 1)), ulp) << "chunk " << chunk;
    EXPECT_LE(max_diff(next, ref.narrow(1, P - 1, 1)), 2 * last_noise + ulp) << "chunk " << chunk;
    EXPECT_NEAR(cache.prefill_stats().attention_fraction(), one.prefill_stats().attention_fraction(),
                0.02 * one.prefill_stats().attention_fraction())
        << "chunk " << chunk;
    double step_diff = 0;
    rtp::sparse::SparseCache again(c, heads, st, &indexer, P + steps, kCuda, torch::kBFloat16);
    model.forward(ids.narrow(1, 0, P), again.options());
    for (int64_t t = P; t < P + steps; ++t) {
      const auto a = model.forward(ids.narrow(1, t, 1), cache.options());
      const auto b = model.forward(ids.narrow(1, t, 1), again.options());
      step_diff = std::max(step_diff, max_diff(a, b));
    }
    EXPECT_LE(step_diff, 2 * noise + ulp) << "chunk " << chunk;
    std::cout << "sparse chunked prefill (" << chunk << "): max |logit diff| against the kernel-free one-shot " << err
              << " (one-shot kernels " << noise << "), decode steps from the two caches " << step_diff
              << ", attended fraction " << cache.prefill_stats().attention_fraction() << " vs "
              << one.prefill_stats().attention_fraction() << "\n";
  }
}

// The sparse cache's one-kernel token store (rtp/kernels/sparse_token_store.h) against its eager store (gathers,
// indexed copies, einsums): the same decode through forward() with each. k/v rows are copied bit for bit, the index
// projections may round differently (float32 sums in another order), so the selections may differ now and then by a
// token near the top-p cut; the logits stay within bf16 noise of each other.
TEST(DecodeStepperCuda, FusedTokenStoreDecodesLikeTheEagerStore) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the fused token store is tested on the GPU machine";
  const auto c = small_config(3, 8, 4, 128);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    rtp::model::Qwen3Model model(c, kCuda, dtype);
    model.init_random(9, 0.05);
    auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
    heads.retrieval[0][1] = heads.retrieval[0][3] = 1;  // retrieval and streaming heads interleaved
    heads.retrieval[2][0] = heads.retrieval[2][1] = heads.retrieval[2][2] = heads.retrieval[2][3] = 1;
    rtp::sparse::Indexer indexer(heads, c.head_dim, 16);
    torch::manual_seed(12);
    for (const auto& [name, t] : indexer.named_parameters()) t.normal_(0, 0.2);
    indexer.to(kCuda, torch::kFloat32);  // float32 weights: the fused store reads them converted once
    rtp::sparse::SparseSettings st;
    st.sink = 4;
    st.window = 32;
    st.top_p = 0.9;
    st.post_rope_indexer = dtype == torch::kFloat32;  // both sources of the index keys
    const int64_t P = 257, steps = 40;
    auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
    torch::NoGradGuard no_grad;
    rtp::sparse::SparseCache fused(c, heads, st, &indexer, P + steps, kCuda, dtype);
    rtp::sparse::SparseCache eager(c, heads, st, &indexer, P + steps, kCuda, dtype);
    ASSERT_TRUE(fused.fused_token_store());
    eager.set_fused_token_store(false);
    model.forward(ids.narrow(1, 0, P), fused.options());
    model.forward(ids.narrow(1, 0, P), eager.options());
    double worst = 0, scale = 0;
    int64_t same_tokens = 0, count_diff = 0;
    for (int64_t t = P; t < P + steps; ++t) {
      auto a = model.forward(ids.narrow(1, t, 1), fused.options());
      auto b = model.forward(ids.narrow(1, t, 1), eager.options());
      worst = std::max(worst, max_diff(a, b));
      scale = std::max(scale, b.abs().max().item<double>());
      same_tokens += a.argmax(-1).item<int64_t>() == b.argmax(-1).item<int64_t>();
      for (int64_t l : {0, 2})
        count_diff += (fused.last_selected()[l] - eager.last_selected()[l]).abs().sum().item<int64_t>();
    }
    std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << " fused token store vs eager: max |logit diff| "
              << worst << " of |logits| up to " << scale << ", greedy tokens equal " << same_tokens << " of " << steps
              << ", selected counts differ by " << count_diff << " tokens in all\n";
    EXPECT_LE(worst, (dtype == torch::kBFloat16 ? 0.05 : 1e-3) * scale);
    EXPECT_GE(same_tokens, steps - 2);
    EXPECT_EQ(fused.length(), eager.length());
    EXPECT_EQ(fused.fused_token_stores(), steps * c.num_hidden_layers);  // every layer of every step took the kernel
    EXPECT_EQ(eager.fused_token_stores(), 0);
  }
}

// The residual add + RMSNorm in the o and down projections' GEMV launch (Qwen3Model::GemvEpilogues::add_norm)
// against the same decode steps with them as kernels of their own: the same sums, norms reduced in another order, so
// logits within rounding of each other and the same greedy tokens; every layer's two norms took the fused launch.
TEST(DecodeStepperCuda, ProjectionNormEpilogueDecodesLikeTheSeparateKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV epilogue is tested on the GPU machine";
  const auto c = small_config(3, 8, 4, 128);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    rtp::model::Qwen3Model model(c, kCuda, dtype);
    model.init_random(10, 0.05);
    torch::manual_seed(13);
    const int64_t P = 17, steps = 12;
    auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
    torch::NoGradGuard no_grad;
    TwinCaches twin(model, ids.narrow(1, 0, P));
    auto &fused_o = twin.a, &plain_o = twin.b;
    const int64_t before = model.gemv_epilogue_launches().add_norm;
    rtp::model::Qwen3Model::GemvEpilogues with, without;
    without.add_norm = false;
    double worst = 0, scale = 0;
    int64_t same_tokens = 0;
    for (int64_t t = P; t < P + steps; ++t) {
      model.set_gemv_epilogues(with);
      auto a = model.forward(ids.narrow(1, t, 1), fused_o);
      model.set_gemv_epilogues(without);
      auto b = model.forward(ids.narrow(1, t, 1), plain_o);
      worst = std::max(worst, max_diff(a, b));
      scale = std::max(scale, b.abs().max().item<double>());
      same_tokens += a.argmax(-1).item<int64_t>() == b.argmax(-1).item<int64_t>();
    }
    std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << " projection norm epilogue vs separate kernels: max "
              << "|logit diff| " << worst << " of |logits| up to " << scale << ", greedy tokens equal " << same_tokens
              << " of " << steps << "\n";
    EXPECT_EQ(model.gemv_epilogue_launches().add_norm - before, steps * 2 * c.num_hidden_layers);
    EXPECT_LE(worst, (dtype == torch::kBFloat16 ? 0.03 : 1e-4) * scale);
    EXPECT_GE(same_tokens, steps - 1);
  }
}

// Three layers, the middle one a dense MLP among the MoE ones, 4 of 16 experts of `intermediate` rows.
rtp::model::ModelConfig small_moe_config(int64_t intermediate) {
  auto c = small_config(3, 8, 2, 128);
  c.num_experts = 16, c.num_experts_per_tok = 4, c.moe_intermediate_size = intermediate, c.norm_topk_prob = true;
  c.mlp_only_layers = {1};
  return c;
}

// The q/k norm + RoPE in the q/k/v projection's launch and the MoE routing in the router's (Qwen3Model::GemvEpilogues)
// against the same decode steps with them as kernels of their own: both epilogues compute as those kernels do, so in
// bf16 the logits are the same to the bit (float32 within 1e-5 of their scale: contractions may differ); every layer
// of every step took the fused launches. Graph replay (DecodeStepper) and eager forwards, dense and MoE layers.
TEST(DecodeStepperCuda, QkNormAndRoutingEpiloguesDecodeLikeTheSeparateKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV epilogues are tested on the GPU machine";
  const auto c = small_moe_config(128);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    rtp::model::Qwen3Model model(c, kCuda, dtype);
    model.init_random(11, 0.05);
    torch::manual_seed(14);
    const int64_t B = 2, P = 9, steps = 10;
    auto ids = torch::randint(0, c.vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
    rtp::model::Qwen3Model::GemvEpilogues with, without;
    with.qk_norm_rope = with.moe_routing = true;  // the defaults
    without.qk_norm_rope = without.moe_routing = false;
    const auto before = model.gemv_epilogue_launches();
    const auto [worst, scale] = decode_with_and_without(model, ids, P, steps, with, without);
    const auto after = model.gemv_epilogue_launches();
    std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << " q/k norm and routing epilogues vs separate kernels: "
              << "max |logit diff| " << worst << " of |logits| up to " << scale << "\n";
    if (dtype == torch::kBFloat16) EXPECT_EQ(worst, 0.0);
    else EXPECT_LE(worst, 1e-5 * scale);
    // The eager steps run every layer; the graphed ones ran them at capture (an eager pass and the capture) only.
    EXPECT_GE(after.qk_norm_rope - before.qk_norm_rope, steps / 2 * c.num_hidden_layers);
    EXPECT_GE(after.moe_routing - before.moe_routing, steps / 2 * (c.num_hidden_layers - 1));
  }
}

// SwiGLU in a dense MLP's gate/up projection launch (Qwen3Model::GemvEpilogues::swiglu) against the projection and the
// SwiGLU kernel: with the gate/up on the whole-rows GEMV in both (2 x 2048 rows of 512, as Auto picks it; at most 8
// outputs per input, so the GEMV and not cuBLAS) the same sums and the same rounding, so the same logits to the bit in
// bf16 (float32 within 1e-5 of their scale: contractions may differ); one sequence (the whole step one graph) and two
// (a graph per layer); every layer took the fused launch.
TEST(DecodeStepperCuda, SwiGluEpilogueDecodesLikeTheSeparateKernels) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV epilogues are tested on the GPU machine";
  auto c = small_config(3, 8, 4, 128);
  c.hidden_size = 512, c.intermediate_size = 2048;
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32})
    for (const int64_t B : {1, 2}) {
      rtp::model::Qwen3Model model(c, kCuda, dtype);
      model.init_random(12, 0.05);
      torch::manual_seed(15);
      const int64_t P = 9, steps = 10;
      auto ids = torch::randint(0, c.vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
      rtp::model::Qwen3Model::GemvEpilogues with, without;
      without.swiglu = false;
      const auto before = model.gemv_epilogue_launches();
      const auto [worst, scale] = decode_with_and_without(model, ids, P, steps, with, without);
      const auto after = model.gemv_epilogue_launches();
      std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << ", " << B << " sequences: SwiGLU epilogue vs "
                << "separate kernels: max |logit diff| " << worst << " of |logits| up to " << scale << "\n";
      if (dtype == torch::kBFloat16) EXPECT_EQ(worst, 0.0);
      else EXPECT_LE(worst, 1e-5 * scale);
      EXPECT_GE(after.swiglu - before.swiglu, steps / 2 * c.num_hidden_layers);
    }
}

// A dense cache's token store in the q/k/v projection's launch (Qwen3Model::GemvEpilogues::kv_store: the k and v rows
// written at the step's slot by the heads' last blocks) against the cache's own store kernel: the same bytes in the
// cache, so the same logits to the bit, bf16 and float32. One sequence (the whole step one graph, the attention inside)
// and two (a graph per layer, the attention between); graph replay and eager steps (the eager forward stores as
// before); the graphed steps' captures took the fused store in every layer.
TEST(DecodeStepperCuda, KvStoreInTheProjectionDecodesLikeTheStoreKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the GEMV epilogues are tested on the GPU machine";
  const auto c = small_config(3, 8, 4, 128);
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32})
    for (const int64_t B : {1, 2}) {
      rtp::model::Qwen3Model model(c, kCuda, dtype);
      model.init_random(17, 0.05);
      torch::manual_seed(18);
      const int64_t P = 13, steps = 10;
      auto ids = torch::randint(0, c.vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
      rtp::model::Qwen3Model::GemvEpilogues with, without;
      with.kv_store = true;
      without.kv_store = false;
      const auto before = model.gemv_epilogue_launches();
      const auto [worst, scale] = decode_with_and_without(model, ids, P, steps, with, without);
      const auto after = model.gemv_epilogue_launches();
      std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << ", " << B
                << " sequences: the token store in the projection vs its own kernel: max |logit diff| " << worst
                << " of |logits| up to " << scale << "\n";
      EXPECT_EQ(worst, 0.0);
      EXPECT_GE(after.kv_store - before.kv_store, c.num_hidden_layers);
    }
}

// The residual add + RMSNorm after an MoE block in the experts' down pass launch (Qwen3Model::GemvEpilogues::
// moe_add_norm, the default) against the same decode steps with it as a kernel of its own. Hidden 2048 and the default
// launch shape (8 down warps): the epilogue reduces as the norm kernel does, so bf16 logits are the same to the bit
// (float32 within 1e-5 of their scale: contractions may differ). Graph replay and eager steps, batch 2, a dense layer
// among the MoE ones (its norm stays the GEMV's); every MoE layer of the eager steps took the fused launch.
TEST(DecodeStepperCuda, MoeNormEpilogueDecodesLikeTheSeparateKernel) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the MoE epilogue is tested on the GPU machine";
  auto c = small_moe_config(128);
  c.hidden_size = 2048;  // the MoE norm epilogue reduces as the norm kernel does at 2048
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    rtp::model::Qwen3Model model(c, kCuda, dtype);
    model.init_random(21, 0.05);
    torch::manual_seed(22);
    const int64_t B = 2, P = 9, steps = 10;
    auto ids = torch::randint(0, c.vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
    rtp::model::Qwen3Model::GemvEpilogues with, without;
    without.moe_add_norm = false;
    const auto before = model.gemv_epilogue_launches();
    const auto [worst, scale] = decode_with_and_without(model, ids, P, steps, with, without);
    const auto after = model.gemv_epilogue_launches();
    std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << " MoE norm epilogue vs separate kernel: max |logit "
              << "diff| " << worst << " of |logits| up to " << scale << "\n";
    if (dtype == torch::kBFloat16) EXPECT_EQ(worst, 0.0);
    else EXPECT_LE(worst, 1e-5 * scale);
    EXPECT_GE(after.moe_add_norm - before.moe_add_norm, steps / 2 * (c.num_hidden_layers - 1));
  }
}

// The MoE block's two passes in one persistent launch (MoeDecodeLaunchShape::one_launch) against two launches: the
// same sums in the same order, so bf16 logits the same to the bit (float32 within 1e-5 of their scale), with the norm
// epilogue in the launch and without it (moe_decode with the model's counts), graph-replayed and eager steps.
TEST(DecodeStepperCuda, MoeOneLaunchDecodesLikeTwoLaunches) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the MoE one launch is tested on the GPU machine";
  auto c = small_moe_config(136);
  c.hidden_size = 2048;  // the MoE norm epilogue reduces as the norm kernel does at 2048
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32})
    for (const bool norm_in_launch : {true, false}) {
      rtp::model::Qwen3Model model(c, kCuda, dtype);
      model.init_random(31, 0.05);
      torch::manual_seed(32);
      const int64_t B = 2, P = 9, steps = 10;
      auto ids = torch::randint(0, c.vocab_size, {B, P + steps}, torch::kInt64).to(kCuda);
      rtp::model::Qwen3Model::GemvEpilogues epilogues;
      epilogues.moe_add_norm = norm_in_launch;
      model.set_gemv_epilogues(epilogues);
      rtp::kernels::MoeDecodeLaunchShape one, two;  // the default is one launch
      two.one_launch = false;
      ASSERT_TRUE(one.one_launch);
      const auto [worst, scale] = decode_twins(
          model, ids, P, steps, [&] { model.set_moe_launch_shape(one); }, [&] { model.set_moe_launch_shape(two); });
      std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << (norm_in_launch ? ", norm in the launch" : "")
                << ": MoE passes in one launch vs two: max |logit diff| " << worst << " of |logits| up to " << scale
                << "\n";
      if (dtype == torch::kBFloat16) EXPECT_EQ(worst, 0.0);
      else EXPECT_LE(worst, 1e-5 * scale);
    }
}

// The LM head on the GEMV with float32 logits (the default) against cuBLAS and the cast: the same hidden state, sums in
// another order, so bf16 logits within a rounding step of each other (float32 within 1e-5 of their scale) and the
// same greedy tokens; graph replay and eager steps, a vocabulary wide enough for the whole-rows layout.
TEST(DecodeStepperCuda, LmHeadGemvDecodesLikeCublas) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the LM head GEMV is tested on the GPU machine";
  auto c = small_config(2, 8, 4, 128);
  c.vocab_size = 5003;
  for (const auto dtype : {torch::kBFloat16, torch::kFloat32}) {
    rtp::model::Qwen3Model model(c, kCuda, dtype);
    model.init_random(12, 0.05);
    torch::manual_seed(15);
    const int64_t P = 11, steps = 10;
    auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
    torch::NoGradGuard no_grad;
    TwinCaches twin(model, ids.narrow(1, 0, P));
    auto &gemv_o = twin.a, &cublas_o = twin.b;
    rtp::model::DecodeStepper gemv_stepper(model), cublas_stepper(model);
    double worst = 0, scale = 0;
    int64_t same_tokens = 0;
    for (int64_t t = P; t < P + steps; ++t) {
      const bool graphs = t % 2 == 0;
      model.set_lm_head_gemv(true);
      auto a = (graphs ? gemv_stepper.step(ids.narrow(1, t, 1), gemv_o) : model.forward(ids.narrow(1, t, 1), gemv_o)).clone();
      model.set_lm_head_gemv(false);
      auto b = (graphs ? cublas_stepper.step(ids.narrow(1, t, 1), cublas_o) : model.forward(ids.narrow(1, t, 1), cublas_o)).clone();
      ASSERT_EQ(a.scalar_type(), torch::kFloat32);
      worst = std::max(worst, max_diff(a, b));
      scale = std::max(scale, b.abs().max().item<double>());
      same_tokens += a.argmax(-1).item<int64_t>() == b.argmax(-1).item<int64_t>();
    }
    model.set_lm_head_gemv(true);
    std::cout << (dtype == torch::kBFloat16 ? "bf16" : "fp32") << " LM head GEMV vs cuBLAS: max |logit diff| " << worst
              << " of |logits| up to " << scale << ", greedy tokens equal " << same_tokens << " of " << steps << "\n";
    // bf16: one rounding step of the largest logits is 2^-8 of them.
    EXPECT_LE(worst, (dtype == torch::kBFloat16 ? 1.0 / 128 : 1e-5) * scale);
    EXPECT_GE(same_tokens, steps - 1);
  }
}

// One decode query over a cache that is a strided view of a larger buffer, grouped heads: the flash path of
// DenseAttention against a float64 reference, its error at most twice a naive bf16 computation's.
TEST(DenseDecodeAttention, MatchesTheFloat64ReferenceOnStridedGroupedCaches) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the flash decode path is tested on the GPU machine";
  torch::manual_seed(21);
  struct Case { int64_t B, Hq, Hkv, D, L, cap; };
  for (const Case& c : {Case{1, 16, 8, 128, 4099, 5000}, Case{2, 32, 4, 128, 1, 64}, Case{1, 8, 8, 64, 777, 777},
                        Case{3, 12, 4, 64, 2051, 3000}}) {
    const auto bf = torch::TensorOptions(torch::kBFloat16).device(kCuda);
    auto kbuf = torch::randn({c.B, c.Hkv, c.cap, c.D}, bf), vbuf = torch::randn({c.B, c.Hkv, c.cap, c.D}, bf);
    rtp::model::LayerAttentionInputs in;
    in.q = torch::randn({c.B, c.Hq, 1, c.D}, bf) * 2;
    in.k = kbuf.narrow(2, 0, c.L);
    in.v = vbuf.narrow(2, 0, c.L);
    in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const auto got = rtp::model::DenseAttention().attend(in);
    const int64_t G = c.Hq / c.Hkv;
    auto q64 = in.q.to(torch::kFloat64), k64 = in.k.to(torch::kFloat64).repeat_interleave(G, 1),
         v64 = in.v.to(torch::kFloat64).repeat_interleave(G, 1);
    const auto ref = torch::matmul(torch::softmax(torch::matmul(q64, k64.transpose(-1, -2)) * in.scale, -1), v64);
    auto kb = in.k.repeat_interleave(G, 1), vb = in.v.repeat_interleave(G, 1);
    const auto naive = torch::matmul(torch::softmax(torch::matmul(in.q, kb.transpose(-1, -2)) * in.scale, -1), vb);
    ASSERT_EQ(got.sizes(), ref.sizes());
    const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double naive_err = (naive.to(torch::kFloat64) - ref).abs().max().item<double>();
    EXPECT_LE(err, 2 * naive_err + 1e-6) << "B " << c.B << " Hq " << c.Hq << " Hkv " << c.Hkv << " D " << c.D << " L " << c.L;
    std::cout << "decode attention B " << c.B << ", " << c.Hq << "/" << c.Hkv << " heads x " << c.D << ", " << c.L
              << " of " << c.cap << " keys: bf16 max |err| " << err << " (naive bf16 " << naive_err << ")\n";
  }
}

// A prefill chunk over a strided, grouped cache (the last tq of tk positions): DenseAttention's default (cuDNN's two
// parts from 512 queries on Hopper, FlashAttention-2 below; dense_attention_gpu_test has both) against a float64 reference with the bottom-right causal mask (query i sees keys j <= i + tk - tq), its error at most twice
// a naive bf16 computation's; chunks that end inside a tile, one-row and whole-cache-minus-one chunks.
TEST(DenseChunkAttention, MatchesTheBottomRightCausalReferenceOnStridedGroupedCaches) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the flash chunk path is tested on the GPU machine";
  torch::manual_seed(23);
  struct Case { int64_t B, Hq, Hkv, D, tq, tk, cap; };
  for (const Case& c : {Case{1, 16, 8, 128, 77, 4099, 5000}, Case{2, 32, 4, 128, 300, 1000, 1024},
                        Case{1, 8, 8, 64, 64, 777, 777}, Case{3, 12, 4, 64, 129, 2051, 3000},
                        Case{1, 16, 2, 128, 2, 65, 100}, Case{1, 16, 2, 128, 999, 1000, 1000}}) {
    const auto bf = torch::TensorOptions(torch::kBFloat16).device(kCuda);
    auto kbuf = torch::randn({c.B, c.Hkv, c.cap, c.D}, bf), vbuf = torch::randn({c.B, c.Hkv, c.cap, c.D}, bf);
    rtp::model::LayerAttentionInputs in;
    // q as the model makes it: [B, T, Hq, D] transposed to [B, Hq, T, D].
    in.q = (torch::randn({c.B, c.tq, c.Hq, c.D}, bf) * 2).transpose(1, 2);
    in.k = kbuf.narrow(2, 0, c.tk);
    in.v = vbuf.narrow(2, 0, c.tk);
    in.scale = 1.0 / std::sqrt(static_cast<double>(c.D));
    const auto got = rtp::model::DenseAttention().attend(in);
    const int64_t G = c.Hq / c.Hkv;
    const auto i = torch::arange(c.tq, torch::TensorOptions(torch::kInt64).device(kCuda)).unsqueeze(1) + (c.tk - c.tq);
    const auto j = torch::arange(c.tk, torch::TensorOptions(torch::kInt64).device(kCuda)).unsqueeze(0);
    const auto hidden = j > i;  // [tq, tk]
    const auto attend = [&](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
      auto scores = torch::matmul(q, k.repeat_interleave(G, 1).transpose(-1, -2)) * in.scale;
      scores = scores.masked_fill(hidden, -std::numeric_limits<double>::infinity());
      return torch::matmul(torch::softmax(scores, -1), v.repeat_interleave(G, 1));
    };
    const auto ref = attend(in.q.to(torch::kFloat64), in.k.to(torch::kFloat64), in.v.to(torch::kFloat64));
    const auto naive = attend(in.q, in.k, in.v);
    ASSERT_EQ(got.sizes(), ref.sizes());
    const double err = (got.to(torch::kFloat64) - ref).abs().max().item<double>();
    const double naive_err = (naive.to(torch::kFloat64) - ref).abs().max().item<double>();
    const std::string what = "B " + std::to_string(c.B) + ", " + std::to_string(c.Hq) + "/" + std::to_string(c.Hkv) +
                             " heads x " + std::to_string(c.D) + ", " + std::to_string(c.tq) + " queries over " +
                             std::to_string(c.tk) + " of " + std::to_string(c.cap) + " keys";
    EXPECT_LE(err, 2 * naive_err + 1e-6) << what;
    std::cout << "chunk attention " << what << ": bf16 max |err| " << err << " (naive bf16 " << naive_err << ")\n";
  }
  // Through a model: the chunked prefill's next-token logits against one forward over the whole prompt (flash with
  // its own causal mask), within bf16 rounding of each other and the same greedy token.
  const auto c = small_config(3, 8, 2, 128);
  rtp::model::Qwen3Model model(c, kCuda, torch::kBFloat16);
  model.init_random(24, 0.05);
  const auto ids = torch::randint(0, c.vocab_size, {2, 333}, torch::kInt64).to(kCuda);
  torch::NoGradGuard no_grad;
  const auto whole = model.forward(ids).narrow(1, ids.size(1) - 1, 1);
  for (const int64_t chunk : {64, 100}) {
    rtp::model::KVCache cache(c.num_hidden_layers);
    const auto next = rtp::model::prefill_chunked(model, cache, ids, chunk);
    const double diff = (next - whole).abs().max().item<double>(), scale = whole.abs().max().item<double>();
    std::cout << "chunked prefill (" << chunk << ") vs one forward: max |logit diff| " << diff << " of " << scale << "\n";
    EXPECT_LE(diff, 0.03 * scale) << "chunk " << chunk;
    EXPECT_TRUE(torch::equal(next.argmax(-1), whole.argmax(-1))) << "chunk " << chunk;
  }
}

}  // namespace

// The dense cache's step attention by the CUDA decode kernel (KVCache::attend_token_on_device), captured with the
// layers as one graph per step: the graphs give exactly what the same steps give without graphs (the same kernels),
// and what forward() gives (FlashAttention) up to bf16 rounding, with the same greedy tokens. With the device
// attention switched off the steps are forward's bit for bit, as before.
TEST(DecodeStepperCuda, DenseCacheAttentionInsideTheGraph) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: decode graphs are tested on the GPU machine";
  for (const int64_t D : {128, 64}) {
    const auto c = small_config(3, 8, 2, D);
    rtp::model::Qwen3Model model(c, kCuda, torch::kBFloat16);
    model.init_random(21, 0.05);
    torch::manual_seed(22);
    const int64_t P = 4111, steps = 24;  // past the first split-size step (4096 keys) during the steps
    auto ids = torch::randint(0, c.vocab_size, {1, P + steps}, torch::kInt64).to(kCuda);
    torch::NoGradGuard no_grad;
    const int64_t L = c.num_hidden_layers;
    rtp::model::KVCache ref_cache(L), graph_cache(L), eager_cache(L), split_cache(L);
    for (auto* k : {&graph_cache, &eager_cache, &split_cache}) k->reserve(P + steps);
    split_cache.set_device_attention(false);
    rtp::model::ForwardOptions ref_o, graph_o, eager_o, split_o;
    ref_o.cache = &ref_cache, graph_o.cache = &graph_cache, eager_o.cache = &eager_cache, split_o.cache = &split_cache;
    for (auto* o : {&ref_o, &graph_o, &eager_o, &split_o}) model.forward(ids.narrow(1, 0, P), *o);
    rtp::model::DecodeStepper graphs(model), eager(model, /*use_graphs=*/false), split(model);
    double worst = 0, scale = 0;
    int64_t same_tokens = 0;
    for (int64_t t = P; t < P + steps; ++t) {
      const auto id = ids.narrow(1, t, 1);
      auto ref = model.forward(id, ref_o);
      auto got = graphs.step(id, graph_o).clone();
      auto plain = eager.step(id, eager_o).clone();
      auto old = split.step(id, split_o).clone();
      EXPECT_TRUE(torch::equal(got, plain)) << "D " << D << " position " << t << ": graphs against no graphs, max |diff| "
                                            << max_diff(got, plain);
      EXPECT_TRUE(torch::equal(old, ref)) << "D " << D << " position " << t << ": attention between the graphs";
      worst = std::max(worst, max_diff(got, ref));
      scale = std::max(scale, ref.abs().max().item<double>());
      same_tokens += got.argmax(-1).item<int64_t>() == ref.argmax(-1).item<int64_t>();
    }
    EXPECT_TRUE(graphs.attention_in_graph());
    EXPECT_TRUE(eager.attention_in_graph());
    EXPECT_FALSE(split.attention_in_graph());
    EXPECT_EQ(graphs.captures(), 1);  // the reservation holds every step: one graph for all of them
    EXPECT_EQ(graph_cache.length(), P + steps);
    EXPECT_EQ(graph_cache.bytes(), ref_cache.bytes());
    std::cout << "D " << D << ": dense cache, attention inside the graph against forward (FlashAttention): max |logit "
              << "diff| " << worst << " of |logits| up to " << scale << ", greedy tokens equal " << same_tokens << " of "
              << steps << "\n";
    EXPECT_LE(worst, 0.05 * scale);
    EXPECT_GE(same_tokens, steps - 2);
  }
}
