// The stage-1 objective, the top-p recall and the sparse forward against direct / brute-force references.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "rtp/model/attention_seam.h"
#include "rtp/sparse/indexer_training.h"
#include "rtp/sparse/sparse_attention.h"
#include "rtp/train/indexer_heads.h"

namespace {

using rtp::sparse::KlInputs;

// One sequence of random attention inputs, pre-RoPE q/k drawn independently (what the indexer reads).
rtp::model::LayerAttentionInputs random_layer_inputs(int64_t Hq, int64_t Hkv, int64_t T, int64_t D, double scale) {
  rtp::model::LayerAttentionInputs in;
  in.q = torch::randn({1, Hq, T, D});
  in.k = torch::randn({1, Hkv, T, D});
  in.v = torch::randn({1, Hkv, T, D});
  in.q_pre_rope = torch::randn({1, Hq, T, D});
  in.k_pre_rope = torch::randn({1, Hkv, T, D});
  in.scale = scale;
  return in;
}

KlInputs random_kl_inputs(int64_t G, int64_t Nq, int64_t T, int64_t D, int64_t d, int64_t chunk) {
  KlInputs in;
  in.q = torch::randn({G, Nq, D}) * 2;
  in.k = torch::randn({T, D});
  in.index_q = torch::randn({G, Nq, d}, torch::requires_grad());
  in.index_k = torch::randn({T, d}, torch::requires_grad());
  in.positions = std::get<0>(torch::sort(torch::randperm(T).narrow(0, 0, Nq)));
  in.scale = 1.0 / std::sqrt(static_cast<double>(D));
  in.key_chunk = chunk;
  return in;
}

torch::Tensor direct_kl(const KlInputs& in) {
  const int64_t T = in.k.size(0);
  auto mask = rtp::sparse::causal_rows_mask(in.positions, T).unsqueeze(0);
  const float ninf = -std::numeric_limits<float>::infinity();
  auto t = (torch::matmul(in.q, in.k.t()) * in.scale).masked_fill(~mask, ninf);
  auto s = (torch::matmul(in.index_q, in.index_k.t()) / std::sqrt(double(in.index_q.size(2)))).masked_fill(~mask, ninf);
  auto logp = torch::log_softmax(t, -1), logq = torch::log_softmax(s, -1);
  auto terms = (logp.exp() * (logp - logq)).masked_fill(~mask, 0);
  return terms.sum(-1).mean();
}

TEST(IndexerKl, ChunkedEqualsDirectValueAndGradient) {
  torch::manual_seed(3);
  for (int64_t chunk : {7, 64, 1000}) {
    auto in = random_kl_inputs(/*G=*/3, /*Nq=*/13, /*T=*/97, /*D=*/32, /*d=*/8, chunk);
    auto ours = rtp::sparse::indexer_kl(in).loss;
    auto ref = direct_kl(in);
    EXPECT_NEAR(ours.item<double>(), ref.item<double>(), 1e-5) << "chunk " << chunk;
    auto g_ours = torch::autograd::grad({ours}, {in.index_q, in.index_k});
    auto g_ref = torch::autograd::grad({ref}, {in.index_q, in.index_k});
    EXPECT_TRUE(torch::allclose(g_ours[0], g_ref[0], 1e-4, 1e-6)) << "chunk " << chunk;
    EXPECT_TRUE(torch::allclose(g_ours[1], g_ref[1], 1e-4, 1e-6)) << "chunk " << chunk;
  }
}

TEST(IndexerKl, ZeroWhenIndexEqualsTeacher) {
  torch::manual_seed(4);
  const int64_t D = 16;
  auto in = random_kl_inputs(2, 9, 40, D, D, 16);
  // s = iq.ik / sqrt(D) equals t = q.k * scale when iq = q and ik = k and scale = 1/sqrt(D).
  in.index_q = in.q.clone();
  in.index_k = in.k.clone();
  EXPECT_NEAR(rtp::sparse::indexer_kl(in).loss.item<double>(), 0.0, 1e-6);
}

TEST(TopPRecall, MatchesBruteForceSort) {
  torch::manual_seed(5);
  const int64_t R = 17, T = 50;
  auto ip = torch::softmax(torch::randn({R, T}) * 3, -1).to(torch::kFloat64);
  auto tp = torch::softmax(torch::randn({R, T}) * 3, -1).to(torch::kFloat64);
  for (double p : {0.5, 0.9, 0.99}) {
    double total = 0;
    for (int64_t r = 0; r < R; ++r) {
      std::vector<int64_t> order(T);
      std::iota(order.begin(), order.end(), 0);
      auto row = ip[r];
      std::sort(order.begin(), order.end(),
                [&](int64_t a, int64_t b) { return row[a].item<double>() > row[b].item<double>(); });
      double mass = 0, kept = 0;
      for (int64_t j : order) {
        if (mass >= p) break;
        mass += row[j].item<double>();
        kept += tp[r][j].item<double>();
      }
      total += kept;
    }
    EXPECT_NEAR(rtp::sparse::topp_recall(ip, tp, p), total / R, 1e-9) << "p " << p;
  }
}

TEST(IndexerInit, SvdRecoversAPlantedSubspace) {
  torch::manual_seed(6);
  const int64_t D = 32, d = 4, N = 400, G = 2;
  auto basis = std::get<0>(torch::linalg_qr(torch::randn({D, d})));  // [D, d] orthonormal
  auto q = torch::matmul(torch::randn({G * 1, N, d}) * 3, basis.t());  // [G, N, D] inside the subspace
  auto k = torch::matmul(torch::randn({1, N, d}) * 3, basis.t());
  auto heads = rtp::sparse::HeadMap::all_streaming(1, 1, G);
  heads.retrieval[0][0] = 1;
  rtp::sparse::Indexer indexer(heads, D, d);
  rtp::sparse::init_indexer_svd(indexer, {q}, {k});
  auto iq = indexer.index_queries(0, q.unsqueeze(0))[0][0];  // [G, N, d]
  auto ik = indexer.index_keys(0, k.unsqueeze(0))[0][0];     // [N, d]
  auto s = torch::matmul(iq, ik.t()) / std::sqrt(double(d));
  auto t = torch::matmul(q, k[0].t()) / std::sqrt(double(D));
  EXPECT_TRUE(torch::allclose(s, t, 1e-3, 1e-3)) << (s - t).abs().max();
}

// The weight layout with several retrieval KV heads per layer (the checkpoint's
// model.layers.{i}.self_attn.indexer.{q_proj,k_proj}.weight, rtp/sparse/indexer.h): q_proj stacks dim-row blocks, one
// per query head of the retrieval groups in KV-head order (block r * G + j for query head j of the r-th retrieval KV
// head), k_proj one dim-row block per retrieval KV head. Index query (r, j) of token t is W_q[block] q[kv_r G + j, t]
// and index key r is W_k[block r] k[kv_r, t], computed here by plain loops from the raw tensors given to load_named.
// Three and two retrieval heads, not contiguous (KV heads 1, 3, 4 of 5; 0 and 2), G = 2, D = 12, dim = 16.
TEST(Indexer, SeveralRetrievalHeadsPerLayerUseTheCheckpointLayout) {
  torch::manual_seed(10);
  const int64_t Hkv = 5, G = 2, Hq = Hkv * G, D = 12, dim = 16, T = 7;
  const std::vector<std::vector<int64_t>> ret = {{1, 3, 4}, {0, 2}};
  auto heads = rtp::sparse::HeadMap::all_streaming(2, Hkv, G);
  for (int64_t l = 0; l < 2; ++l)
    for (int64_t g : ret[l]) heads.retrieval[l][g] = 1;
  rtp::sparse::Indexer indexer(heads, D, dim);
  std::vector<std::pair<std::string, torch::Tensor>> raw;
  std::vector<torch::Tensor> wq(2), wk(2);
  for (int64_t l = 0; l < 2; ++l) {
    const int64_t n = static_cast<int64_t>(ret[l].size());
    wq[l] = torch::randn({n * G * dim, D});
    wk[l] = torch::randn({n * dim, D});
    const std::string pre = "model.layers." + std::to_string(l) + ".self_attn.indexer.";
    raw.emplace_back(pre + "q_proj.weight", wq[l]);
    raw.emplace_back(pre + "k_proj.weight", wk[l]);
  }
  indexer.load_named(raw, "test");
  const auto q = torch::randn({1, Hq, T, D}), k = torch::randn({1, Hkv, T, D});
  torch::NoGradGuard no_grad;
  for (int64_t l = 0; l < 2; ++l) {
    const int64_t n = static_cast<int64_t>(ret[l].size());
    const auto iq = indexer.index_queries(l, q).to(torch::kFloat64).contiguous();  // [1, n, G, T, dim]
    const auto ik = indexer.index_keys(l, k).to(torch::kFloat64).contiguous();     // [1, n, T, dim]
    ASSERT_EQ(iq.sizes(), (std::vector<int64_t>{1, n, G, T, dim}));
    ASSERT_EQ(ik.sizes(), (std::vector<int64_t>{1, n, T, dim}));
    const auto Q = q.accessor<float, 4>(), K = k.accessor<float, 4>();
    const auto WQ = wq[l].accessor<float, 2>(), WK = wk[l].accessor<float, 2>();
    const auto IQ = iq.accessor<double, 5>();
    const auto IK = ik.accessor<double, 4>();
    double err_q = 0, err_k = 0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < dim; ++e) {
          for (int64_t j = 0; j < G; ++j) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += double(Q[0][ret[l][r] * G + j][t][d]) * WQ[(r * G + j) * dim + e][d];
            err_q = std::max(err_q, std::fabs(IQ[0][r][j][t][e] - s));
          }
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += double(K[0][ret[l][r]][t][d]) * WK[r * dim + e][d];
          err_k = std::max(err_k, std::fabs(IK[0][r][t][e] - s));
        }
    EXPECT_LT(err_q, 1e-5) << "layer " << l;
    EXPECT_LT(err_k, 1e-5) << "layer " << l;
  }
  // The tensors come back under the same names in the same layout (what export writes).
  for (const auto& [name, t] : indexer.named_parameters()) {
    const auto it = std::find_if(raw.begin(), raw.end(), [&](const auto& kv) { return kv.first == name; });
    ASSERT_NE(it, raw.end()) << name;
    EXPECT_TRUE(torch::equal(t, it->second)) << name;
  }
}

// Plain-loop reference of one head's attention under an explicit visibility predicate.
torch::Tensor loop_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                             const std::function<bool(int64_t, int64_t)>& visible) {
  const int64_t T = q.size(0), D = q.size(1);
  auto out = torch::zeros({T, D}, torch::kFloat64);
  auto qa = q.to(torch::kFloat64), ka = k.to(torch::kFloat64), va = v.to(torch::kFloat64);
  for (int64_t i = 0; i < T; ++i) {
    std::vector<int64_t> keys;
    for (int64_t j = 0; j < T; ++j)
      if (visible(i, j)) keys.push_back(j);
    auto idx = torch::tensor(keys);
    auto s = torch::matmul(ka.index_select(0, idx), qa[i]) * scale;
    out[i] = torch::matmul(torch::softmax(s, 0), va.index_select(0, idx));
  }
  return out;
}

TEST(SparseAttention, StreamingHeadsEqualLoopReference) {
  torch::manual_seed(7);
  const int64_t Hq = 4, Hkv = 2, T = 77, D = 16;
  rtp::sparse::SparseSettings st;
  st.sink = 3;
  st.window = 10;
  st.block_size = 64;
  auto heads = rtp::sparse::HeadMap::all_streaming(1, Hkv, Hq / Hkv);
  rtp::sparse::SparseAttention attn(heads, st, nullptr);
  rtp::model::LayerAttentionInputs in;
  in.q = torch::randn({1, Hq, T, D});
  in.k = torch::randn({1, Hkv, T, D});
  in.v = torch::randn({1, Hkv, T, D});
  in.q_pre_rope = in.q;
  in.k_pre_rope = in.k;
  in.scale = 0.25;
  auto out = attn.attend(in);
  for (int64_t h = 0; h < Hq; ++h) {
    auto ref = loop_attention(in.q[0][h], in.k[0][h / 2], in.v[0][h / 2], in.scale,
                              [&](int64_t i, int64_t j) { return j <= i && (j < st.sink || j > i - st.window); });
    EXPECT_TRUE(torch::allclose(out[0][h].to(torch::kFloat64), ref, 1e-5, 1e-5)) << "head " << h;
  }
  // Visible pairs per query: min(i+1, sink + window) when windows do not overlap the sinks.
  double expected = 0;
  for (int64_t i = 0; i < T; ++i) {
    int64_t n = 0;
    for (int64_t j = 0; j <= i; ++j) n += (j < st.sink || j > i - st.window) ? 1 : 0;
    expected += n;
  }
  EXPECT_NEAR(attn.stats().attended_pairs, expected * Hq, 1e-6);
  EXPECT_NEAR(attn.stats().causal_pairs, Hq * T * (T + 1) / 2.0, 1e-6);
}

TEST(SparseAttention, RetrievalHeadAttendsItsSelectedBlocksOnly) {
  torch::manual_seed(8);
  const int64_t Hq = 2, Hkv = 1, T = 601, D = 32, d = 16, B = 64;
  rtp::sparse::SparseSettings st;
  st.block_size = B;
  st.top_p = 0.6;
  auto heads = rtp::sparse::HeadMap::all_streaming(1, Hkv, Hq);
  heads.retrieval[0][0] = 1;
  rtp::sparse::Indexer indexer(heads, D, d);
  indexer.q_proj(0).normal_();
  indexer.k_proj(0).normal_();
  rtp::sparse::SparseAttention attn(heads, st, &indexer);
  const auto in = random_layer_inputs(Hq, Hkv, T, D, 0.25);
  auto mask = attn.layer_mask(in);  // [Hq, T, T]
  const int64_t nb = (T + B - 1) / B;
  bool some_block_dropped = false;
  for (int64_t qb = 0; qb < nb; ++qb) {
    for (int64_t kb = 0; kb <= qb; ++kb) {
      // A key block is either fully visible to a query row or not at all (causality aside), and the
      // sink block and the diagonal block are always visible.
      const int64_t i = std::min(T - 1, qb * B + B - 1);
      const int64_t j0 = kb * B;
      const bool v = mask[0][i][j0].item<bool>();
      if (kb == 0 || kb == qb) EXPECT_TRUE(v) << "block " << qb << "," << kb;
      if (!v) some_block_dropped = true;
      for (int64_t j = j0; j < std::min(T, j0 + B); ++j)
        if (j <= i) EXPECT_EQ(mask[0][i][j].item<bool>(), v);
    }
  }
  EXPECT_TRUE(some_block_dropped) << "top-p 0.6 over 10 blocks should drop some";
  auto out = attn.attend(in);
  auto ref = loop_attention(in.q[0][1], in.k[0][0], in.v[0][0], in.scale,
                            [&](int64_t i, int64_t j) { return mask[1][i][j].item<bool>(); });
  EXPECT_TRUE(torch::allclose(out[0][1].to(torch::kFloat64), ref, 1e-5, 1e-5));
}

// The pair counts the kernel path reports (from the rule and the block lists, no mask) equal the visibility
// mask's sums, for streaming and retrieval heads, ragged lengths, sinks older than the window, and dense prompts.
TEST(SparseAttention, PairCountsWithoutTheMaskEqualTheMask) {
  torch::manual_seed(9);
  const int64_t Hq = 4, Hkv = 2, D = 32, d = 16;
  auto heads = rtp::sparse::HeadMap::all_streaming(1, Hkv, Hq / Hkv);
  heads.retrieval[0][1] = 1;
  rtp::sparse::Indexer indexer(heads, D, d);
  indexer.q_proj(0).normal_();
  indexer.k_proj(0).normal_();
  for (const int64_t T : {int64_t{37}, int64_t{300}, int64_t{701}}) {
    rtp::sparse::SparseSettings st;
    st.block_size = 64;
    st.top_p = 0.6;
    st.sink = 3;
    st.window = 50;
    st.dense_below = 64;
    rtp::sparse::SparseAttention attn(heads, st, &indexer);
    const auto in = random_layer_inputs(Hq, Hkv, T, D, 0.2);
    const auto mask = attn.layer_mask(in);
    const bool dense = T < st.dense_below;
    const auto lists = attn.reference_lists(in);
    const auto pairs = attn.kv_head_pairs(0, T, dense ? nullptr : &lists);
    for (int64_t g = 0; g < Hkv; ++g) {
      const double from_mask = mask[g * (Hq / Hkv)].sum().item<double>();
      EXPECT_EQ(pairs[static_cast<size_t>(g)], from_mask) << "T " << T << ", KV head " << g;
    }
    if (!dense) EXPECT_LT(pairs[1], T * (T + 1) / 2.0) << "top-p 0.6 should drop blocks at T " << T;
  }
}

TEST(RandomHeads, SameCountDeterministicAndSeedDependent) {
  auto a = rtp::train::random_head_map(4, 4, 2, 3, 11);
  auto b = rtp::train::random_head_map(4, 4, 2, 3, 11);
  auto c = rtp::train::random_head_map(4, 4, 2, 3, 12);
  EXPECT_EQ(a.count_retrieval(), 3);
  EXPECT_EQ(a.retrieval, b.retrieval);
  EXPECT_NE(a.retrieval, c.retrieval);
}

}  // namespace
