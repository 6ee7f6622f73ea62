// Decoding through the sparse cache (ring buffers for streaming heads, full caches + index keys for retrieval
// heads) against the masked sparse forward over the whole sequence (a consistency check: the prompt goes through
// that same SparseAttention code), and against independent references: the dense model where the head map is dense
// in effect, and a plain-loop forward written from the definition (DefinitionSeam) for real streaming and retrieval
// heads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <utility>
#include <vector>
#include <torch/torch.h>

#include "model/model_fixtures.h"
#include "sparse/sparse_definition.h"
#include "rtp/model/qwen3.h"
#include "rtp/kernels/sparse_attention_params.h"
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
    // The prompt runs the same SparseAttention as `whole` (consistency only; MixedHeadsEqualTheDefinitionByLoops
    // and DenseEquivalentStreamingEqualsTheDenseModel below check it against independent references).
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
  st.top_p = 0.9;
  // 1000 tokens: the 128 forced ones (first and last 64) carry well under top_p of the index mass, so the
  // histogram rule has to choose among the rest.
  const int64_t T = 1000;
  torch::manual_seed(11);
  auto ids = torch::randint(0, s.model.config().vocab_size, {1, T}, torch::kInt64);
  rtp::sparse::SparseCache cache(s.model.config(), s.heads, st, &s.indexer, T, torch::kCPU, torch::kFloat32);
  torch::NoGradGuard no_grad;
  // The pre-RoPE q/k of layer 1 (the retrieval head's layer), captured for an independent count below.
  std::vector<torch::Tensor> k_pre;
  torch::Tensor q_last;
  auto opts = cache.options();
  opts.observer = [&](const rtp::model::LayerAttentionInputs& in) {
    if (in.layer != 1) return;
    k_pre.push_back(in.k_pre_rope.clone());
    q_last = in.q_pre_rope.clone();
  };
  s.model.forward(ids.narrow(1, 0, T - 1), opts);
  auto last = s.model.forward(ids.narrow(1, T - 1, 1), opts);
  EXPECT_TRUE(torch::isfinite(last).all().item<bool>());
  const int64_t sel = cache.last_selected()[1][0].item<int32_t>();
  // The decode selection rule of sparse_attention_params.h in double precision with torch ops: P = mean over the
  // group of softmax(index_q . index_k / 4); forced first/last 64; bins of -8 log2 P; the first bin whose running
  // mass (forced first) reaches top_p of the total.
  const auto iq = s.indexer.index_queries(1, q_last)[0].select(2, 0).to(torch::kFloat64);      // [1, G, 16]
  const auto ik = s.indexer.index_keys(1, torch::cat(k_pre, 2))[0].to(torch::kFloat64);        // [1, T, 16]
  const auto pv = torch::softmax(torch::matmul(iq[0], ik[0].t()) / 4.0, -1).mean(0).contiguous();  // [T]
  const double* pp = pv.data_ptr<double>();
  std::vector<double> hist(rtp::kernels::kDecodeBins, 0.0);
  std::vector<int> bin(T);
  double forced = 0, total = 0;
  auto is_forced = [&](int64_t j) { return j < 64 || j > (T - 1) - 64; };
  for (int64_t j = 0; j < T; ++j) {
    bin[j] = pp[j] > 0 ? int(std::min<double>(rtp::kernels::kDecodeBins - 1,
                                              std::max(0.0, std::floor(-rtp::kernels::kDecodeBinsPerOctave * std::log2(pp[j])))))
                       : rtp::kernels::kDecodeBins - 1;
    (is_forced(j) ? forced : hist[bin[j]]) += pp[j];
    total += pp[j];
  }
  int bstar = rtp::kernels::kDecodeBins - 1;
  double acc = forced;
  if (acc >= st.top_p * total) {
    bstar = -1;
  } else {
    for (int b = 0; b < rtp::kernels::kDecodeBins; ++b)
      if ((acc += hist[b]) >= st.top_p * total) {
        bstar = b;
        break;
      }
  }
  int64_t expected = 0;
  for (int64_t j = 0; j < T; ++j) expected += is_forced(j) || bin[j] <= bstar;
  std::cout << "top-p " << st.top_p << " selected " << sel << " of " << T << " tokens (independent count " << expected
            << ")\n";
  EXPECT_NEAR(sel, expected, 2) << "decode selection differs from the rule computed here";
  EXPECT_LT(sel, T - 100) << "top-p kept (nearly) every token";
  EXPECT_GT(sel, 64 + 64 + 20) << "top-p kept (nearly) only the forced keep_first + keep_last tokens";
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

namespace {

Setup make_two_retrieval_setup() {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  heads.retrieval[1][1] = 1;
  heads.retrieval[2][0] = 1;
  rtp::sparse::Indexer indexer(heads, c.head_dim, 16);
  torch::manual_seed(12);
  for (int64_t l : {1, 2}) {
    indexer.q_proj(l).normal_(0, 0.5);
    indexer.k_proj(l).normal_(0, 0.5);
  }
  return {std::move(model), heads, indexer};
}

}  // namespace

// A prompt prefilled in chunks must give the logits of the one-shot prefill (the masked sparse forward over the
// whole prompt), leave the caches in the same state (decode steps after it agree) and count the same attended
// pairs. Windows smaller than a chunk (the ring wraps inside one chunk), between chunk sizes, and larger than
// the prompt; retrieval heads whose top-p drops blocks; a ragged last chunk.
// Decode steps are compared for streaming-only head maps (pass 2): decode's token-level top-p for retrieval
// heads is a step function of the index scores (bins; even top_p 1 stops at the bin where the mass reaches 1 in
// floating point), so the ~1e-7 differences of a chunked prefill's activations can move a token across a bin
// edge; two one-shot caches decoding the same tokens interleaved differ there as well.
TEST(SparseCache, ChunkedPrefillEqualsOneShot) {
  auto s = make_two_retrieval_setup();
  const int64_t P = 64 * 5 + 29, decode = 4;
  auto ids = torch::randint(0, s.model.config().vocab_size, {1, P + decode}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const auto& c = s.model.config();
  const auto stream_only = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  for (const int pass : {1, 2})
  for (const int64_t window : {int64_t{40}, int64_t{150}, int64_t{1000}}) {
    const auto& heads = pass == 1 ? s.heads : stream_only;
    const double top_p = 0.6;
    rtp::sparse::SparseSettings st;
    st.sink = 3;
    st.window = window;
    st.top_p = top_p;
    rtp::sparse::SparseCache one(s.model.config(), heads, st, &s.indexer, P + decode, torch::kCPU, torch::kFloat32);
    std::vector<torch::Tensor> ref{s.model.forward(ids.narrow(1, 0, P), one.options())};
    for (int64_t t = P; t < P + decode; ++t) ref.push_back(s.model.forward(ids.narrow(1, t, 1), one.options()));
    const auto& os = one.prefill_stats();
    // the retrieval heads really drop blocks, and the window really hides keys
    if (pass == 1) {
      ASSERT_LT(os.head_attended[1][1], 0.9 * os.head_causal[1][1]);
      ASSERT_LT(os.head_attended[2][0], 0.9 * os.head_causal[2][0]);
    }
    if (window < P) ASSERT_LT(os.head_attended[0][0], 0.9 * os.head_causal[0][0]);
    for (const int64_t chunk : {int64_t{64}, int64_t{128}, int64_t{192}}) {
      rtp::sparse::SparseCache cache(s.model.config(), heads, st, &s.indexer, P + decode, torch::kCPU, torch::kFloat32);
      cache.begin_prompt(P);
      std::vector<torch::Tensor> parts;
      for (int64_t c = 0; c < P; c += chunk)
        parts.push_back(s.model.forward(ids.narrow(1, c, std::min(chunk, P - c)), cache.options()));
      const auto where =
          "pass " + std::to_string(pass) + ", window " + std::to_string(window) + ", chunk " + std::to_string(chunk);
      EXPECT_LE((torch::cat(parts, 1) - ref[0]).abs().max().item<double>(), 1e-4) << where;
      for (int64_t t = 0; t < (pass == 2 ? decode : 0); ++t) {
        auto step = s.model.forward(ids.narrow(1, P + t, 1), cache.options());
        EXPECT_LE((step - ref[1 + t]).abs().max().item<double>(), 1e-4) << where << ", decode step " << t;
      }
      EXPECT_EQ(cache.length(), P + (pass == 2 ? decode : 0));
      const auto& cs = cache.prefill_stats();
      for (size_t l = 0; l < os.head_attended.size(); ++l)
        for (size_t g = 0; g < os.head_attended[l].size(); ++g) {
          EXPECT_NEAR(cs.head_attended[l][g], os.head_attended[l][g], 1e-6 * os.head_causal[l][g])
              << where << ", layer " << l << " head " << g;
          EXPECT_DOUBLE_EQ(cs.head_causal[l][g], os.head_causal[l][g]);
        }
      EXPECT_NEAR(cs.attention_fraction(), os.attention_fraction(), 1e-9) << where;
    }
  }
}

TEST(SparseCache, PrefillChunkedHelperAndChunkErrors) {
  auto s = make_two_retrieval_setup();
  rtp::sparse::SparseSettings st;
  st.sink = 2;
  st.window = 30;
  st.top_p = 0.6;
  const int64_t P = 200;
  auto ids = torch::randint(0, s.model.config().vocab_size, {1, P}, torch::kInt64);
  torch::NoGradGuard no_grad;
  rtp::sparse::SparseCache one(s.model.config(), s.heads, st, &s.indexer, P, torch::kCPU, torch::kFloat32);
  auto whole = s.model.forward(ids, one.options());
  rtp::sparse::SparseCache cache(s.model.config(), s.heads, st, &s.indexer, P, torch::kCPU, torch::kFloat32);
  auto last = rtp::sparse::prefill_chunked(s.model, cache, ids, 128);
  ASSERT_EQ(last.sizes(), torch::IntArrayRef({1, 1, s.model.config().vocab_size}));  // the next-token logits only
  EXPECT_LE((last - whole.narrow(1, P - 1, 1)).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(cache.length(), P);
  // chunks that split a query block are refused, by the helper and by the cache itself
  rtp::sparse::SparseCache bad(s.model.config(), s.heads, st, &s.indexer, P, torch::kCPU, torch::kFloat32);
  EXPECT_THROW(rtp::sparse::prefill_chunked(s.model, bad, ids, 100), std::exception);
  rtp::sparse::SparseCache bad2(s.model.config(), s.heads, st, &s.indexer, P, torch::kCPU, torch::kFloat32);
  bad2.begin_prompt(P);
  EXPECT_THROW(s.model.forward(ids.narrow(1, 0, 100), bad2.options()), std::exception);
  // a chunk running past the announced prompt
  rtp::sparse::SparseCache bad3(s.model.config(), s.heads, st, &s.indexer, P, torch::kCPU, torch::kFloat32);
  bad3.begin_prompt(64);
  EXPECT_THROW(s.model.forward(ids.narrow(1, 0, 128), bad3.options()), std::exception);
}

// ---- Independent references for the sparse cache's logits.

namespace {

// Every head streaming with a window reaching back past the first token is dense attention: the sparse cache's
// prompt (one shot and chunked) and decode logits must be the dense model's (no seam: torch SDPA) at every position.
TEST(SparseCache, DenseEquivalentStreamingEqualsTheDenseModel) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  const auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  const int64_t T = 150;
  torch::manual_seed(13);
  const auto ids = torch::randint(0, c.vocab_size, {1, T}, torch::kInt64);
  torch::NoGradGuard no_grad;
  const auto dense = model.forward(ids);  // [1, T, V]
  for (const int64_t sink : {int64_t{0}, int64_t{4}})
    for (const int64_t P : {int64_t{1}, int64_t{37}, int64_t{100}, int64_t{149}})
      for (const int64_t chunk : {int64_t{0}, int64_t{64}}) {
        if (chunk && P <= chunk) continue;
        rtp::sparse::SparseSettings st;
        st.sink = sink;
        st.window = T + 3 - sink;  // the ring holds more than every token
        rtp::sparse::SparseCache cache(c, heads, st, nullptr, T, torch::kCPU, torch::kFloat32);
        const auto first = rtp::sparse::prefill_chunked(model, cache, ids.narrow(1, 0, P), chunk);
        const int64_t n = first.size(1);  // the next-token logits only
        EXPECT_EQ(n, 1);
        const auto where = "sink " + std::to_string(sink) + ", prompt " + std::to_string(P) + ", chunk " + std::to_string(chunk);
        EXPECT_LE((first - dense.narrow(1, P - n, n)).abs().max().item<double>(), 2e-5) << where;
        for (int64_t t = P; t < T; ++t) {
          const auto step = model.forward(ids.narrow(1, t, 1), cache.options());
          EXPECT_LE((step[0][0] - dense[0][t]).abs().max().item<double>(), 2e-5) << where << ", position " << t;
        }
      }
}

// The definition for the sparse cache, by plain loops in double, as an AttentionSeam for one forward over a whole
// sequence whose first `prompt` tokens were the cache's prompt: streaming KV heads and retrieval KV heads' prompt
// rows (the block lists of a one-shot prefill over the prompt's tokens) by sparse/sparse_definition.h; retrieval
// KV heads' rows i >= prompt (decoded tokens) by the token-level decode selection at t = i (P over the keys 0..i,
// forced first / last 64 tokens, bins of -8 log2 P, b* the first bin whose running mass reaches top_p * Z, every
// token of a bin <= b*). Index vectors from the raw W_q / W_k (checkpoint layout) on the pre-RoPE q / k. Records
// each layer's output and how far every selection decision lies from flipping (so that a test can require its
// comparison to be well posed).
class DefinitionSeam : public rtp::model::AttentionSeam {
 public:
  DefinitionSeam(const rtp::sparse::HeadMap& heads, const rtp::sparse::SparseSettings& st,
                 std::vector<torch::Tensor> wq, std::vector<torch::Tensor> wk, int64_t prompt)
      : heads_(heads), st_(st), wq_(std::move(wq)), wk_(std::move(wk)), prompt_(prompt) {}

  std::vector<torch::Tensor> outputs;  // per layer [Hq, T, D] float64
  double prefill_margin = 1e300;       // min over the prompt's block lists of BlockList::margin
  double decode_edge = 1e300;          // min over decoded rows of |-8 log2 P_j - (b* + 1)| of non-forced j
  double decode_cut = 1e300;           // min over decoded rows of |mass(b) - top_p Z| / Z, b = b*, b* - 1
  int64_t dropped_blocks = 0, dropped_tokens = 0, kept_unforced_tokens = 0;

  torch::Tensor attend(const rtp::model::LayerAttentionInputs& in) override {
    const int64_t l = in.layer, Hq = in.q.size(1), Hkv = in.k.size(1), T = in.q.size(2), D = in.q.size(3);
    const int64_t G = Hq / Hkv;
    const auto q = in.q[0].to(torch::kFloat64).contiguous(), k = in.k[0].to(torch::kFloat64).contiguous();
    const auto v = in.v[0].to(torch::kFloat64).contiguous();
    const auto qp = in.q_pre_rope[0].to(torch::kFloat64).contiguous(), kp = in.k_pre_rope[0].to(torch::kFloat64).contiguous();
    const auto Q = q.accessor<double, 3>(), K = k.accessor<double, 3>(), V = v.accessor<double, 3>();
    const auto QP = qp.accessor<double, 3>(), KP = kp.accessor<double, 3>();
    auto out = torch::zeros({Hq, T, D}, torch::kFloat64);
    auto O = out.accessor<double, 3>();
    int64_t r = 0;
    for (int64_t g = 0; g < Hkv; ++g) {
      const rtp::testing::VisibilityMask vis = heads_.retrieval[l][g] ? retrieval_visibility(l, r++, g, G, T, D, QP, KP)
                                                                      : rtp::testing::streaming_visibility(T, st_);
      for (int64_t h = g * G; h < (g + 1) * G; ++h)
        for (int64_t i = 0; i < T; ++i) rtp::testing::attend_row(Q[h][i], K[g], V[g], vis[i], i, D, in.scale, O[h][i]);
    }
    if (static_cast<int64_t>(outputs.size()) <= l) outputs.resize(l + 1);
    outputs[l] = out;
    return out.to(in.q.dtype()).unsqueeze(0);
  }

 private:
  template <typename A>
  rtp::testing::VisibilityMask retrieval_visibility(int64_t l, int64_t r, int64_t g, int64_t G, int64_t T, int64_t D,
                                                    const A& QP, const A& KP) {
    const int64_t P = std::min(prompt_, T);
    const auto iv = rtp::testing::retrieval_index_vectors(wq_[l].accessor<float, 2>(), wk_[l].accessor<float, 2>(), QP,
                                                          KP, r, g, G, T, D, st_.indexer_dim);
    const auto lists = rtp::testing::prompt_block_lists(iv, P, st_);
    for (const auto& list : lists) {
      prefill_margin = std::min(prefill_margin, list.margin);
      dropped_blocks += list.dropped;
    }
    auto vis = rtp::testing::block_visibility(lists, T, P, st_.block_size);
    // decoded rows: token-level selection at t = i
    const int NB = rtp::kernels::kDecodeBins;
    const int64_t keep_first = 64, keep_last = 64;  // the decode defaults (ops::SparseConfig)
    for (int64_t t = P; t < T; ++t) {
      std::vector<double> Pj(t + 1, 0.0);
      for (int64_t h = 0; h < G; ++h) {
        std::vector<double> s(t + 1);
        for (int64_t j = 0; j <= t; ++j) s[j] = rtp::testing::index_score(iv.q[h][t], iv.k[j]);
        const double mx = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (int64_t j = 0; j <= t; ++j) z += std::exp(s[j] - mx);
        for (int64_t j = 0; j <= t; ++j) Pj[j] += std::exp(s[j] - mx) / z / double(G);
      }
      auto forced = [&](int64_t j) { return j < keep_first || j > t - keep_last; };
      std::vector<double> x(t + 1);
      std::vector<int> bin(t + 1);
      double Z = 0;
      for (int64_t j = 0; j <= t; ++j) {
        x[j] = Pj[j] > 0 ? -rtp::kernels::kDecodeBinsPerOctave * std::log2(Pj[j]) : 1e300;
        bin[j] = Pj[j] > 0 ? std::max(0, int(std::min<double>(NB - 1, std::floor(x[j])))) : NB - 1;
        Z += Pj[j];
      }
      auto mass = [&](int b) {
        double s = 0;
        for (int64_t j = 0; j <= t; ++j)
          if (forced(j) || bin[j] <= b) s += Pj[j];
        return s;
      };
      int bstar = NB - 1;
      if (st_.top_p < 1)
        for (int b = -1; b < NB; ++b)
          if (mass(b) >= st_.top_p * Z) {
            bstar = b;
            break;
          }
      if (st_.top_p < 1) {
        decode_cut = std::min(decode_cut, std::fabs(mass(bstar) - st_.top_p * Z) / Z);
        if (bstar >= 0) decode_cut = std::min(decode_cut, std::fabs(mass(bstar - 1) - st_.top_p * Z) / Z);
      }
      for (int64_t j = 0; j <= t; ++j) {
        if (!forced(j)) decode_edge = std::min(decode_edge, std::fabs(x[j] - (bstar + 1)));
        vis[t][j] = forced(j) || bin[j] <= bstar;
        dropped_tokens += !vis[t][j];
        kept_unforced_tokens += vis[t][j] && !forced(j);
      }
    }
    return vis;
  }

  rtp::sparse::HeadMap heads_;
  rtp::sparse::SparseSettings st_;
  std::vector<torch::Tensor> wq_, wk_;
  int64_t prompt_;
};

// Forwards to the cache and records each layer's attention output (for per-layer comparisons).
class Recorder : public rtp::model::AttentionSeam {
 public:
  explicit Recorder(rtp::sparse::SparseCache& cache) : cache_(cache) {}
  std::vector<torch::Tensor> outputs;  // per layer [Hq, T, D] of the last forward
  torch::Tensor attend(const rtp::model::LayerAttentionInputs& in) override {
    auto o = cache_.attend(in);
    if (static_cast<int64_t>(outputs.size()) <= in.layer) outputs.resize(in.layer + 1);
    outputs[in.layer] = o[0].to(torch::kFloat64);
    return o;
  }

 private:
  rtp::sparse::SparseCache& cache_;
};

}  // namespace

// Streaming heads with windows that hide keys and retrieval heads whose top-p drops blocks (prompt) and tokens
// (decode) against DefinitionSeam: the cache's prompt logits (one forward, and chunks of 128) and the logits of 14
// decoded tokens must be those of one forward over the whole sequence through the definition, and so must every
// layer's attention output. Retrieval
// heads: two in layer 1 (KV heads 0 and 1: several slots, G = 2), one in layer 2 (KV head 0); a ragged last prompt
// block; the ring wraps many times.
TEST(SparseCache, MixedHeadsEqualTheDefinitionByLoops) {
  auto model = rtp::model::load_qwen3(rtp::testing::model_fixture_dir("qwen3-tiny"), torch::kCPU, torch::kFloat32);
  const auto& c = model.config();
  auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  heads.retrieval[1][0] = heads.retrieval[1][1] = 1;
  heads.retrieval[2][0] = 1;
  const int64_t I = 16, G = c.group_size(), D = c.head_dim;
  rtp::sparse::Indexer indexer(heads, D, I);
  torch::manual_seed(20);
  std::vector<torch::Tensor> wq(c.num_hidden_layers), wk(c.num_hidden_layers);
  std::vector<std::pair<std::string, torch::Tensor>> raw;
  for (int64_t l : {1, 2}) {
    const int64_t n = l == 1 ? 2 : 1;
    wq[l] = torch::randn({n * G * I, D}) * 0.25;
    wk[l] = torch::randn({n * I, D}) * 0.25;
    const std::string pre = "model.layers." + std::to_string(l) + ".self_attn.indexer.";
    raw.emplace_back(pre + "q_proj.weight", wq[l]);
    raw.emplace_back(pre + "k_proj.weight", wk[l]);
  }
  indexer.load_named(raw, "test");
  rtp::sparse::SparseSettings st;
  st.sink = 3;
  st.window = 40;
  st.top_p = 0.6;
  st.block_size = 64;
  const int64_t P = 64 * 7 + 37, T = P + 14;
  const auto ids = torch::randint(0, c.vocab_size, {1, T}, torch::kInt64);
  torch::NoGradGuard no_grad;
  DefinitionSeam def(heads, st, wq, wk, P);
  rtp::model::ForwardOptions o;
  o.attention = &def;
  const auto ref = model.forward(ids, o);  // [1, T, V]
  const auto ref_layers = def.outputs;
  // The comparison is well posed: no decision of the definition lies within rounding of flipping (the cache's index
  // vectors are float32 and its decoded tokens' activations come from other op orders than this one forward's).
  EXPECT_GT(def.prefill_margin, 1e-4);
  EXPECT_GT(def.decode_edge, 1e-3);
  EXPECT_GT(def.decode_cut, 1e-4);  // (seed 20: 6e-3, 4e-3 and 5e-4; the cache's errors are ~1e-6)
  // ... and the rules bite: blocks dropped in the prompt; in the decoded rows tokens dropped and tokens chosen
  // beyond the forced first / last 64.
  EXPECT_GT(def.dropped_blocks, 0);
  EXPECT_GT(def.dropped_tokens, 0);
  EXPECT_GT(def.kept_unforced_tokens, 0);

  // The prompt in one forward and in chunks of 128 (attend_chunk: another code path).
  for (const int64_t chunk : {P, int64_t{128}}) {
    rtp::sparse::SparseCache cache(c, heads, st, &indexer, T, torch::kCPU, torch::kFloat32);
    if (chunk < P) cache.begin_prompt(P);
    Recorder rec(cache);
    auto opts = [&] {
      auto op = cache.options();
      op.attention = &rec;
      return op;
    };
    auto layer_err = [&](int64_t l, int64_t row0, int64_t rows) {
      const auto want = ref_layers[l].narrow(1, row0, rows);
      return (rec.outputs[l] - want).abs().max().item<double>() / (1e-6 + want.abs().max().item<double>());
    };
    const auto where = "chunk " + std::to_string(chunk);
    for (int64_t c0 = 0; c0 < P; c0 += chunk) {
      const int64_t n = std::min(chunk, P - c0);
      const auto part = model.forward(ids.narrow(1, c0, n), opts());
      EXPECT_LE((part - ref.narrow(1, c0, n)).abs().max().item<double>(), 1e-4) << where << ", prompt rows from " << c0;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        EXPECT_LE(layer_err(l, c0, n), 1e-5) << where << ", prompt rows from " << c0 << ", layer " << l;
    }
    for (int64_t t = P; t < T; ++t) {
      const auto step = model.forward(ids.narrow(1, t, 1), opts());
      EXPECT_LE((step[0][0] - ref[0][t]).abs().max().item<double>(), 1e-4) << where << ", position " << t;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l)
        EXPECT_LE(layer_err(l, t, 1), 1e-5) << where << ", position " << t << ", layer " << l;
    }
  }
}
