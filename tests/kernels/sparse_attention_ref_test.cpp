// CPU references of the sparse-attention contract against independent brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "rtp/kernels/sparse_attention.h"

using namespace rtp::kernels;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float s = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, s);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Masked dense attention, computed independently of the reference: an explicit T x T mask per KV head.
std::vector<float> masked_dense(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                int Hq, int Hkv, int T, int D, const std::vector<std::vector<char>>& mask) {
  std::vector<float> o(size_t(Hq) * T * D);
  const int G = Hq / Hkv;
  for (int h = 0; h < Hq; ++h)
    for (int i = 0; i < T; ++i) {
      std::vector<double> s(T, -INFINITY);
      double mx = -INFINITY;
      for (int j = 0; j < T; ++j) {
        if (!mask[h / G][size_t(i) * T + j]) continue;
        double d = 0;
        for (int e = 0; e < D; ++e) d += double(q[(size_t(h) * T + i) * D + e]) * k[(size_t(h / G) * T + j) * D + e];
        s[j] = d / std::sqrt(double(D));
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      std::vector<double> acc(D, 0);
      for (int j = 0; j < T; ++j) {
        if (s[j] == -INFINITY) continue;
        const double e = std::exp(s[j] - mx);
        z += e;
        for (int d = 0; d < D; ++d) acc[d] += e * v[(size_t(h / G) * T + j) * D + d];
      }
      for (int d = 0; d < D; ++d) o[(size_t(h) * T + i) * D + d] = float(acc[d] / z);
    }
  return o;
}

}  // namespace

TEST(SelectBlocksCpu, MatchesBruteForceSubsetSearch) {
  // Small enough that every subset of blocks can be enumerated: the list must be a smallest set holding the
  // forced blocks whose estimated mass reaches top_p, and among those the one of highest mass.
  for (int trial = 0; trial < 6; ++trial) {
    const int R = 2, G = 3, B = 64, T = 64 * 9 + 17 * (trial % 2);
    const int nb = (T + B - 1) / B;
    auto iq = randn(size_t(R) * G * T * kIndexDim, 10 + trial, 1.5f);
    auto ik = randn(size_t(R) * T * kIndexDim, 20 + trial, 1.5f);
    std::vector<int32_t> counts(R * nb), idx(size_t(R) * nb * nb);
    std::vector<float> probs(size_t(R) * nb * nb);
    BlockSelectParams p;
    p.index_q = iq.data();
    p.index_k = ik.data();
    p.counts = counts.data();
    p.indices = idx.data();
    p.block_probs = probs.data();
    p.num_ret_heads = R;
    p.group_size = G;
    p.seq_len = T;
    p.block_size = B;
    p.local_blocks = 1 + trial % 2;
    p.max_blocks = nb;
    p.top_p = trial < 3 ? 0.9f : 0.6f;
    ASSERT_STREQ(check_block_select_params(p), "");
    select_blocks_cpu(p);
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < nb; ++b) {
        const float* P = probs.data() + (size_t(r) * nb + b) * nb;
        double tot = 0;
        for (int c = 0; c <= b; ++c) tot += P[c];
        EXPECT_NEAR(tot, 1.0, 1e-5);
        const int cnt = counts[r * nb + b];
        const int32_t* l = idx.data() + (size_t(r) * nb + b) * nb;
        unsigned mask = 0;
        for (int n = 0; n < cnt; ++n) {
          if (n) EXPECT_LT(l[n - 1], l[n]);
          EXPECT_LE(l[n], b);
          mask |= 1u << l[n];
        }
        unsigned forced = 0;
        for (int c = 0; c <= b; ++c)
          if (is_forced_block(b, c, p.local_blocks)) forced |= 1u << c;
        EXPECT_EQ(mask & forced, forced);
        auto mass = [&](unsigned m) {
          double s = 0;
          for (int c = 0; c <= b; ++c)
            if (m >> c & 1) s += P[c];
          return s;
        };
        int best_size = 99;
        double best_mass = -1;
        for (unsigned m = 0; m < (1u << (b + 1)); ++m) {
          if ((m & forced) != forced) continue;
          const int sz = __builtin_popcount(m);
          const bool ok = mass(m) >= p.top_p - 1e-7 || m == (1u << (b + 1)) - 1;
          if (ok && (sz < best_size || (sz == best_size && mass(m) > best_mass))) best_size = sz, best_mass = mass(m);
        }
        if (mass(forced) >= p.top_p) best_size = __builtin_popcount(forced), best_mass = mass(forced);
        EXPECT_EQ(cnt, best_size) << "r=" << r << " b=" << b;
        EXPECT_NEAR(mass(mask), best_mass, 1e-6);
      }
  }
}

namespace {

// Block probabilities with query sub-blocks, written independently of the reference: every query token is
// assigned to its (block, sub-block) first, the sub-block's pooled query is the mean of its tokens, the block
// logits come from a full row of per-key scores, and P_h is the mean of the sub-blocks' softmaxes.
// Returns P [R][nb][nb] (zero above the diagonal).
std::vector<double> brute_subblock_probs(const std::vector<float>& iq, const std::vector<float>& ik, int R, int G,
                                         int T, int B, int S) {
  const int nb = (T + B - 1) / B, sub = B / S;
  std::vector<double> P(size_t(R) * nb * nb, 0.0);
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < G; ++h) {
      // sums[b][s][d] and counts[b][s] over the tokens of each sub-block
      std::vector<double> sums(size_t(nb) * S * kIndexDim, 0.0);
      std::vector<int> cnt(size_t(nb) * S, 0);
      for (int i = 0; i < T; ++i) {
        const int slot = (i / B) * S + (i % B) / sub;
        ++cnt[slot];
        for (int d = 0; d < kIndexDim; ++d) sums[size_t(slot) * kIndexDim + d] += iq[((size_t(r) * G + h) * T + i) * kIndexDim + d];
      }
      for (int b = 0; b < nb; ++b) {
        int live = 0;
        for (int s = 0; s < S; ++s) live += cnt[b * S + s] > 0;
        for (int s = 0; s < S; ++s) {
          const int slot = b * S + s;
          if (!cnt[slot]) continue;
          std::vector<double> u(T);
          for (int j = 0; j < T; ++j) {
            double dot = 0;
            for (int d = 0; d < kIndexDim; ++d)
              dot += sums[size_t(slot) * kIndexDim + d] / cnt[slot] * ik[(size_t(r) * T + j) * kIndexDim + d];
            u[j] = dot / std::sqrt(double(kIndexDim));
          }
          std::vector<double> L(b + 1);
          for (int c = 0; c <= b; ++c) {
            const int j0 = c * B, j1 = std::min(T, j0 + B);
            const double mx = *std::max_element(u.begin() + j0, u.begin() + j1);
            double mean = 0;
            for (int j = j0; j < j1; ++j) mean += u[j] / (j1 - j0);
            L[c] = std::max(mx, mean + std::log(double(j1 - j0)));
          }
          const double top = *std::max_element(L.begin(), L.end());
          double z = 0;
          for (double l : L) z += std::exp(l - top);
          for (int c = 0; c <= b; ++c) P[(size_t(r) * nb + b) * nb + c] += std::exp(L[c] - top) / z / live / G;
        }
      }
    }
  return P;
}

// Top-p over one row of P by repeated arg-max (the definition's order: higher P first, lower index on ties).
std::vector<int32_t> brute_topp_list(const double* P, int b, int local_blocks, double top_p) {
  std::vector<char> keep(b + 1, 0);
  double m = top_p;
  for (int c = 0; c <= b; ++c)
    if (is_forced_block(b, c, local_blocks)) keep[c] = 1, m -= P[c];
  for (double acc = 0; acc < m;) {
    int best = -1;
    for (int c = 0; c <= b; ++c)
      if (!keep[c] && (best < 0 || P[c] > P[best])) best = c;
    if (best < 0) break;
    keep[best] = 1, acc += P[best];
  }
  std::vector<int32_t> out;
  for (int c = 0; c <= b; ++c)
    if (keep[c]) out.push_back(c);
  return out;
}

}  // namespace

// Runs select_blocks_cpu with the given aggregate for every S of Ss (B 64 and 128, a last block holding 37 queries,
// so some of its sub-blocks are empty) and checks its block probabilities and lists against brute(iq, ik, R, G, T,
// B, S) and brute_topp_list.
using BruteProbs = std::vector<double> (*)(const std::vector<float>&, const std::vector<float>&, int, int, int, int, int);
void expect_selection_matches_brute(BlockAggregate agg, uint32_t seed, std::initializer_list<int> Ss, BruteProbs brute) {
  const int R = 2, G = 3;
  for (int B : {64, 128}) {
    const int T = B * 5 + 37;
    const int nb = (T + B - 1) / B;
    auto iq = randn(size_t(R) * G * T * kIndexDim, seed + B, 1.5f);
    auto ik = randn(size_t(R) * T * kIndexDim, seed + 1 + B, 1.5f);
    for (int S0 : Ss) {
      const int S = S0 == 0 ? B : S0;  // 0 stands for S = B (one query per sub-block)
      std::vector<int32_t> counts(R * nb), idx(size_t(R) * nb * nb);
      std::vector<float> probs(size_t(R) * nb * nb);
      BlockSelectParams p;
      p.index_q = iq.data(), p.index_k = ik.data(), p.counts = counts.data(), p.indices = idx.data();
      p.block_probs = probs.data();
      p.num_ret_heads = R, p.group_size = G, p.seq_len = T, p.block_size = B, p.local_blocks = 1 + S % 3;
      p.max_blocks = nb, p.top_p = 0.8f, p.query_sub_blocks = S, p.sub_block_aggregate = agg;
      ASSERT_STREQ(check_block_select_params(p), "");
      select_blocks_cpu(p);
      const auto P = brute(iq, ik, R, G, T, B, S);
      for (int r = 0; r < R; ++r)
        for (int b = 0; b < nb; ++b) {
          const size_t row = (size_t(r) * nb + b) * nb;
          double sum = 0;
          for (int c = 0; c < nb; ++c) {
            EXPECT_NEAR(probs[row + c], P[row + c], 1e-6) << "B " << B << " S " << S << " b " << b << " c " << c;
            sum += probs[row + c];
          }
          EXPECT_NEAR(sum, 1.0, 1e-5);
          const auto want = brute_topp_list(&P[row], b, p.local_blocks, p.top_p);
          ASSERT_EQ(counts[r * nb + b], int(want.size())) << "B " << B << " S " << S << " r " << r << " b " << b;
          for (size_t n = 0; n < want.size(); ++n) EXPECT_EQ(idx[row + n], want[n]);
        }
    }
  }
}

TEST(SelectBlocksCpu, QuerySubBlocksMatchBruteForce) {
  expect_selection_matches_brute(BlockAggregate::MEAN, 70, {1, 2, 4, 8, 16, 0}, brute_subblock_probs);
}

// S = block_size pools nothing: P_h is the mean over the block's query tokens of each token's own block softmax.
// The MAX sub-block aggregate, written independently of the reference: for query block b, every (query head,
// sub-block) with at least one token gets its own distribution D (pooled query -> per-key scores -> L ->
// softmax over key blocks 0..b); P is the elementwise max of the D's divided by its sum. Returns P [R][nb][nb].
std::vector<double> brute_max_probs(const std::vector<float>& iq, const std::vector<float>& ik, int R, int G, int T,
                                    int B, int S) {
  const int nb = (T + B - 1) / B, sub = B / S;
  std::vector<double> P(size_t(R) * nb * nb, 0.0);
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < nb; ++b) {
      std::vector<double> mx(b + 1, 0.0);
      for (int h = 0; h < G; ++h)
        for (int s = 0; s < S; ++s) {
          std::vector<int> members;
          for (int i = b * B + s * sub; i < b * B + (s + 1) * sub; ++i)
            if (i < T) members.push_back(i);
          if (members.empty()) continue;
          double q[kIndexDim] = {0};
          for (int i : members)
            for (int d = 0; d < kIndexDim; ++d) q[d] += iq[((size_t(r) * G + h) * T + i) * kIndexDim + d] / members.size();
          std::vector<double> L(b + 1);
          for (int c = 0; c <= b; ++c) {
            std::vector<double> u;
            for (int j = c * B; j < std::min(T, c * B + B); ++j) {
              double dot = 0;
              for (int d = 0; d < kIndexDim; ++d) dot += q[d] * ik[(size_t(r) * T + j) * kIndexDim + d];
              u.push_back(dot / 4);
            }
            const double n = double(u.size());
            L[c] = std::max(*std::max_element(u.begin(), u.end()),
                            std::accumulate(u.begin(), u.end(), 0.0) / n + std::log(n));
          }
          double z = 0;
          for (double l : L) z += std::exp(l);
          for (int c = 0; c <= b; ++c) mx[c] = std::max(mx[c], std::exp(L[c]) / z);
        }
      const double z = std::accumulate(mx.begin(), mx.end(), 0.0);
      for (int c = 0; c <= b; ++c) P[(size_t(r) * nb + b) * nb + c] = mx[c] / z;
    }
  return P;
}

TEST(SelectBlocksCpu, MaxAggregateMatchesBruteForce) {
  expect_selection_matches_brute(BlockAggregate::MAX, 170, {1, 2, 8, 0}, brute_max_probs);
}

// One sub-block of eight looks at key block 2, the other seven at key block 5: the mean gives block 2 about
// 1/8 of the mass and top-p 0.8 drops it; the max gives both about half and keeps both.
TEST(SelectBlocksCpu, MaxAggregateKeepsABlockOneSubBlockNeeds) {
  const int G = 1, B = 64, T = 64 * 12, nb = 12, S = 8;
  auto iq = randn(size_t(G) * T * kIndexDim, 191, 0.3f);
  auto ik = randn(size_t(T) * kIndexDim, 192, 0.3f);
  for (int i = 0; i < T; ++i) iq[size_t(i) * kIndexDim + 3] += (i % B < B / S) ? 8.f : -8.f;
  for (int j = 2 * B + 7; j < 2 * B + 10; ++j) ik[size_t(j) * kIndexDim + 3] += 8.f;
  for (int j = 5 * B + 20; j < 5 * B + 23; ++j) ik[size_t(j) * kIndexDim + 3] -= 8.f;
  std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
  BlockSelectParams p;
  p.index_q = iq.data(), p.index_k = ik.data(), p.counts = counts.data(), p.indices = idx.data();
  p.num_ret_heads = 1, p.group_size = G, p.seq_len = T, p.max_blocks = nb, p.top_p = 0.8f, p.query_sub_blocks = S;
  auto has = [&](int b, int c) {
    const int32_t* l = idx.data() + size_t(b) * nb;
    return std::find(l, l + counts[b], c) != l + counts[b];
  };
  select_blocks_cpu(p);  // MEAN (default)
  for (int b = 7; b < nb; ++b) {
    EXPECT_TRUE(has(b, 5)) << "mean, block " << b;
    EXPECT_FALSE(has(b, 2)) << "mean, block " << b;
  }
  p.sub_block_aggregate = BlockAggregate::MAX;
  select_blocks_cpu(p);
  for (int b = 7; b < nb; ++b) {
    EXPECT_TRUE(has(b, 5)) << "max, block " << b;
    EXPECT_TRUE(has(b, 2)) << "max, block " << b;
    EXPECT_LE(counts[b], 4) << "max, block " << b;  // sink, the two targets, the diagonal
  }
}

TEST(SelectBlocksCpu, AggregateMustBeMeanOrMax) {
  std::vector<float> q(kIndexDim * 64), k(kIndexDim * 64);
  std::vector<int32_t> c(1), ix(2);
  BlockSelectParams p;
  p.index_q = q.data(), p.index_k = k.data(), p.counts = c.data(), p.indices = ix.data();
  p.num_ret_heads = 1, p.group_size = 1, p.seq_len = 64, p.max_blocks = 2;
  EXPECT_STREQ(check_block_select_params(p), "");
  p.sub_block_aggregate = BlockAggregate::MAX;
  EXPECT_STREQ(check_block_select_params(p), "");
  p.sub_block_aggregate = static_cast<BlockAggregate>(7);
  EXPECT_STRNE(check_block_select_params(p), "");
}

TEST(SelectBlocksCpu, QuerySubBlocksEqualToBlockSizeArePerToken) {
  const int G = 2, B = 64, T = 64 * 3 + 5, nb = 4;
  auto iq = randn(size_t(G) * T * kIndexDim, 81, 1.5f);
  auto ik = randn(size_t(T) * kIndexDim, 82, 1.5f);
  std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
  std::vector<float> probs(size_t(nb) * nb);
  BlockSelectParams p;
  p.index_q = iq.data(), p.index_k = ik.data(), p.counts = counts.data(), p.indices = idx.data();
  p.block_probs = probs.data(), p.num_ret_heads = 1, p.group_size = G, p.seq_len = T, p.max_blocks = nb;
  p.query_sub_blocks = B;
  select_blocks_cpu(p);
  for (int b = 0; b < nb; ++b) {
    const int i0 = b * B, i1 = std::min(T, i0 + B);
    std::vector<double> want(b + 1, 0.0);
    for (int h = 0; h < G; ++h)
      for (int i = i0; i < i1; ++i) {
        std::vector<double> L(b + 1);
        for (int c = 0; c <= b; ++c) {
          double mx = -INFINITY, sum = 0;
          const int j1 = std::min(T, c * B + B);
          for (int j = c * B; j < j1; ++j) {
            double u = 0;
            for (int d = 0; d < kIndexDim; ++d) u += double(iq[(size_t(h) * T + i) * kIndexDim + d]) * ik[size_t(j) * kIndexDim + d];
            mx = std::max(mx, u / 4), sum += u / 4;
          }
          L[c] = std::max(mx, sum / (j1 - c * B) + std::log(double(j1 - c * B)));
        }
        double z = 0;
        for (double l : L) z += std::exp(l);
        for (int c = 0; c <= b; ++c) want[c] += std::exp(L[c]) / z / (G * (i1 - i0));
      }
    for (int c = 0; c <= b; ++c) EXPECT_NEAR(probs[b * nb + c], want[c], 1e-6) << "b " << b << " c " << c;
  }
}

// Half of every query block looks at key block 2, the other half at key block 5, along opposite directions:
// the block's mean query cancels and matches neither, two sub-blocks find both.
TEST(SelectBlocksCpu, QuerySubBlocksRecoverQueriesLookingApart) {
  const int G = 1, B = 64, T = 64 * 12, nb = 12;
  auto iq = randn(size_t(G) * T * kIndexDim, 91, 0.3f);
  auto ik = randn(size_t(T) * kIndexDim, 92, 0.3f);
  for (int i = 0; i < T; ++i) iq[size_t(i) * kIndexDim + 3] += (i % B < B / 2) ? 8.f : -8.f;
  for (int j = 2 * B + 7; j < 2 * B + 10; ++j) ik[size_t(j) * kIndexDim + 3] += 8.f;
  for (int j = 5 * B + 20; j < 5 * B + 23; ++j) ik[size_t(j) * kIndexDim + 3] -= 8.f;
  std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
  BlockSelectParams p;
  p.index_q = iq.data(), p.index_k = ik.data(), p.counts = counts.data(), p.indices = idx.data();
  p.num_ret_heads = 1, p.group_size = G, p.seq_len = T, p.max_blocks = nb, p.top_p = 0.9f;
  select_blocks_cpu(p);
  const double pooled = selection_recall_cpu(p, 3);
  int pooled_blocks = 0;
  for (int b = 7; b < nb; ++b) pooled_blocks += counts[b];
  p.query_sub_blocks = 2;
  select_blocks_cpu(p);
  const double split = selection_recall_cpu(p, 3);
  int split_blocks = 0;
  for (int b = 7; b < nb; ++b) {
    const int32_t* l = idx.data() + size_t(b) * nb;
    EXPECT_TRUE(std::find(l, l + counts[b], 2) != l + counts[b]) << "block " << b;
    EXPECT_TRUE(std::find(l, l + counts[b], 5) != l + counts[b]) << "block " << b;
    split_blocks += counts[b];
  }
  // The cancelled mean query sees flat blocks, so top-p needs most of them to reach the mass; the split
  // needs the two targets plus the forced blocks.
  EXPECT_GT(split, 0.85);
  EXPECT_LE(split_blocks, 4 * (nb - 7));
  EXPECT_GT(pooled_blocks, 2 * split_blocks) << "pooled recall " << pooled << ", split recall " << split;
}

TEST(SelectBlocksCpu, QuerySubBlocksMustTileTheBlock) {
  std::vector<float> q(kIndexDim * 64), k(kIndexDim * 64);
  std::vector<int32_t> c(1), ix(2);
  BlockSelectParams p;
  p.index_q = q.data(), p.index_k = k.data(), p.counts = c.data(), p.indices = ix.data();
  p.num_ret_heads = 1, p.group_size = 1, p.seq_len = 64, p.max_blocks = 2;
  for (int S : {1, 2, 32, 64}) {
    p.query_sub_blocks = S;
    EXPECT_STREQ(check_block_select_params(p), "") << S;
  }
  for (int S : {0, -1, 3, 48, 128}) {
    p.query_sub_blocks = S;
    EXPECT_STRNE(check_block_select_params(p), "") << S;
  }
}

TEST(SelectBlocksCpu, PooledEstimateFindsPlantedNeedle) {
  // One key block holds keys aligned with the queries: the true token-level mass concentrates there and the
  // pooled estimate must find it (recall of the true indexer mass close to 1).
  const int R = 1, G = 2, B = 64, T = 64 * 12;
  auto iq = randn(size_t(R) * G * T * kIndexDim, 1, 0.3f);
  auto ik = randn(size_t(R) * T * kIndexDim, 2, 0.3f);
  for (int i = 0; i < T; ++i)
    for (int h = 0; h < G; ++h) iq[(size_t(h) * T + i) * kIndexDim + 3] += 6.f;
  for (int j = 64 * 5 + 10; j < 64 * 5 + 14; ++j) ik[size_t(j) * kIndexDim + 3] += 6.f;
  const int nb = T / B;
  std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
  BlockSelectParams p;
  p.index_q = iq.data();
  p.index_k = ik.data();
  p.counts = counts.data();
  p.indices = idx.data();
  p.num_ret_heads = R;
  p.group_size = G;
  p.seq_len = T;
  p.max_blocks = nb;
  select_blocks_cpu(p);
  for (int b = 6; b < nb; ++b) {
    const int32_t* l = idx.data() + size_t(b) * nb;
    EXPECT_TRUE(std::find(l, l + counts[b], 5) != l + counts[b]) << "block " << b;
    EXPECT_LE(counts[b], 5);
  }
  EXPECT_GT(selection_recall_cpu(p, 7), 0.85);
  p.top_p = 1.0f;
  select_blocks_cpu(p);
  EXPECT_NEAR(selection_recall_cpu(p, 7), 1.0, 1e-9);
}

TEST(SparseAttentionCpu, MatchesMaskedDense) {
  for (int D : {16, 64}) {
    const int Hq = 6, Hkv = 3, T = 64 * 4 + 37, B = 64, nb = (T + B - 1) / B;
    const int64_t sink = 3, window = 50;
    auto q = randn(size_t(Hq) * T * D, 3), k = randn(size_t(Hkv) * T * D, 4), v = randn(size_t(Hkv) * T * D, 5);
    const HeadKind kinds[3] = {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL};
    // a random list per query block (with the forced blocks)
    std::mt19937 rng(7);
    std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
    std::vector<std::vector<char>> mask(3, std::vector<char>(size_t(T) * T, 0));
    for (int b = 0; b < nb; ++b) {
      int c = 0;
      for (int kb = 0; kb <= b; ++kb)
        if (kb == 0 || kb == b || rng() % 2) idx[size_t(b) * nb + c++] = kb;
      counts[b] = c;
    }
    for (int i = 0; i < T; ++i)
      for (int j = 0; j <= i; ++j) {
        mask[0][size_t(i) * T + j] = 1;
        mask[1][size_t(i) * T + j] = j < sink || j > i - window;
        const int32_t* l = idx.data() + size_t(i / B) * nb;
        mask[2][size_t(i) * T + j] = std::find(l, l + counts[i / B], j / B) != l + counts[i / B];
      }
    std::vector<float> o(size_t(Hq) * T * D, NAN);
    SparseAttentionParams p;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.o = o.data();
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.seq_len = T;
    p.head_dim = D;
    p.head_kind = kinds;
    p.sink = sink;
    p.window = window;
    p.block_counts = counts.data();
    p.block_indices = idx.data();
    p.max_blocks = nb;
    ASSERT_STREQ(check_sparse_attention_params(p, false), "");
    sparse_attention_cpu(p);
    const auto ref = masked_dense(q, k, v, Hq, Hkv, T, D, mask);
    double err = 0;
    for (size_t n = 0; n < o.size(); ++n) err = std::max(err, double(std::fabs(o[n] - ref[n])));
    EXPECT_LT(err, 1e-5) << "D=" << D;
  }
}

TEST(SparseDecodeCpu, StreamingAndDenseMatchLastPrefillRow) {
  const int Hq = 4, Hkv = 2, D = 32, L = 150;
  const int64_t sink = 4, window = 40, ring = sink + window;
  auto q = randn(size_t(Hq) * L * D, 11), k = randn(size_t(Hkv) * L * D, 12), v = randn(size_t(Hkv) * L * D, 13);
  const HeadKind kinds[2] = {HeadKind::STREAMING, HeadKind::DENSE};
  for (int Lc : {3, 30, 44, 45, 97, 150}) {
    // prefill reference over the first Lc tokens
    std::vector<float> qs(size_t(Hq) * Lc * D), ks(size_t(Hkv) * Lc * D), vs(size_t(Hkv) * Lc * D);
    for (int h = 0; h < Hq; ++h) std::copy_n(&q[size_t(h) * L * D], size_t(Lc) * D, &qs[size_t(h) * Lc * D]);
    for (int h = 0; h < Hkv; ++h) {
      std::copy_n(&k[size_t(h) * L * D], size_t(Lc) * D, &ks[size_t(h) * Lc * D]);
      std::copy_n(&v[size_t(h) * L * D], size_t(Lc) * D, &vs[size_t(h) * Lc * D]);
    }
    std::vector<float> op(qs.size());
    SparseAttentionParams pa;
    pa.q = qs.data(), pa.k = ks.data(), pa.v = vs.data(), pa.o = op.data();
    pa.num_q_heads = Hq, pa.num_kv_heads = Hkv, pa.seq_len = Lc, pa.head_dim = D, pa.head_kind = kinds;
    pa.sink = sink, pa.window = window;
    sparse_attention_cpu(pa);
    // decode: ring for head 0 written token by token, full cache for head 1
    std::vector<float> kr(ring * D), vr(ring * D), qd(size_t(Hq) * D), od(size_t(Hq) * D);
    for (int j = 0; j < Lc; ++j) {
      const int64_t slot = j < sink ? j : sink + (j - sink) % window;
      std::copy_n(&k[size_t(j) * D], D, &kr[slot * D]);
      std::copy_n(&v[size_t(j) * D], D, &vr[slot * D]);
    }
    for (int h = 0; h < Hq; ++h) std::copy_n(&q[(size_t(h) * L + Lc - 1) * D], D, &qd[size_t(h) * D]);
    SparseDecodeParams pd;
    pd.q = qd.data(), pd.o = od.data();
    pd.k_full = k.data() + size_t(L) * D, pd.v_full = v.data() + size_t(L) * D, pd.cap_full = L;
    pd.k_ring = kr.data(), pd.v_ring = vr.data();
    pd.num_q_heads = Hq, pd.num_kv_heads = Hkv, pd.head_dim = D, pd.kv_len = Lc, pd.head_kind = kinds;
    pd.sink = sink, pd.window = window;
    ASSERT_STREQ(check_sparse_decode_params(pd, false), "");
    sparse_decode_cpu(pd);
    for (int h = 0; h < Hq; ++h)
      for (int d = 0; d < D; ++d)
        EXPECT_NEAR(od[size_t(h) * D + d], op[(size_t(h) * Lc + Lc - 1) * D + d], 1e-5) << "Lc=" << Lc << " h=" << h;
  }
}

namespace {

// ---- Decode with top-p: an independent float64 reference of the whole output (sparse_attention_params.h, "Decode").
// The keys of every KV head come as plain [Hkv, L, D] arrays (token j at row j): the reference knows nothing of the
// full-cache / ring layouts, the test writes those from the same arrays.
struct DecodeCase {
  std::vector<HeadKind> kinds;
  int G = 1, D = 16, L = 1;
  float top_p = 0.9f;
  int64_t keep_first = 64, keep_last = 64, sink = 4, window = 8192;
  float index_scale = 1.f, key_scale = 1.f;  // spread of index_q / index_k (how peaked P is)
  uint32_t seed = 1;
};

struct DecodeRef {
  std::vector<double> o;                      // [Hq, D]
  std::vector<std::vector<double>> P;         // per retrieval slot: P(j), j in [0, L)
  std::vector<std::vector<char>> selected;    // per retrieval slot: the definition's selected set
  std::vector<int> bstar;                     // per retrieval slot
  double min_bin_edge_distance = 1e300;       // min over non-forced j of |-8 log2 P_j - nearest integer|
  double min_cut_margin = 1e300;              // min over slots of |mass(b) - top_p Z| / Z for b = b*, b* - 1
};

// Straight from the definition, no histogram: for each candidate b in -1, 0, .., NB-1 in turn the mass
// sum_F P + sum_{j not in F, bin(P_j) <= b} P_j is summed over the tokens again, and b* is the first b whose mass
// reaches top_p * Z (Z = sum_j P_j); b* = NB - 1 when top_p >= 1 or when none does. Selected = F plus every j with
// bin(P_j) <= b*. Attention: softmax(q k_j * scale) v over the selected (RETRIEVAL), the window and sinks
// (STREAMING) or all keys (DENSE) of j in [0, t].
// The definition writes bin(P) = min(NB-1, floor(-8 log2 P)); it is a histogram bin, so it also cannot go below 0
// (P slightly above 1 by rounding, possible only when one token holds all the mass, would give -1): clamped at 0.
DecodeRef decode_reference(const DecodeCase& c, const std::vector<float>& q, const std::vector<float>& k,
                           const std::vector<float>& v, const std::vector<float>& iq, const std::vector<float>& ik) {
  const int Hkv = int(c.kinds.size()), G = c.G, D = c.D, L = c.L, t = L - 1;
  const int NB = kDecodeBins;
  DecodeRef out;
  out.o.assign(size_t(Hkv) * G * D, 0.0);
  const double scale = 1.0 / std::sqrt(double(D));
  int r = 0;
  for (int g = 0; g < Hkv; ++g) {
    std::vector<char> vis(L, 0);
    if (c.kinds[g] == HeadKind::RETRIEVAL) {
      std::vector<double> P(L, 0.0);
      for (int h = 0; h < G; ++h) {
        std::vector<double> s(L);
        for (int j = 0; j < L; ++j) {
          double u = 0;
          for (int d = 0; d < kIndexDim; ++d)
            u += double(iq[(size_t(r) * G + h) * kIndexDim + d]) * ik[(size_t(r) * L + j) * kIndexDim + d];
          s[j] = u / std::sqrt(double(kIndexDim));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (int j = 0; j < L; ++j) z += std::exp(s[j] - mx);
        for (int j = 0; j < L; ++j) P[j] += std::exp(s[j] - mx) / z / G;
      }
      auto forced = [&](int j) { return j < c.keep_first || j > t - c.keep_last; };
      std::vector<int> bin(L);
      for (int j = 0; j < L; ++j) {
        if (P[j] <= 0) {
          bin[j] = NB - 1;
          continue;
        }
        const double x = -kDecodeBinsPerOctave * std::log2(P[j]);
        bin[j] = std::max(0, int(std::min<double>(NB - 1, std::floor(x))));
        if (!forced(j) && x > 0 && x < NB - 1) out.min_bin_edge_distance = std::min(out.min_bin_edge_distance, std::fabs(x - std::round(x)));
      }
      double Z = 0;
      for (int j = 0; j < L; ++j) Z += P[j];
      auto mass = [&](int b) {
        double m = 0;
        for (int j = 0; j < L; ++j)
          if (forced(j) || bin[j] <= b) m += P[j];
        return m;
      };
      int bstar = NB - 1;
      if (c.top_p < 1.f)
        for (int b = -1; b < NB; ++b)
          if (mass(b) >= double(c.top_p) * Z) {
            bstar = b;
            break;
          }
      if (c.top_p < 1.f) {
        out.min_cut_margin = std::min(out.min_cut_margin, std::fabs(mass(bstar) - c.top_p * Z) / Z);
        if (bstar >= 0) out.min_cut_margin = std::min(out.min_cut_margin, std::fabs(mass(bstar - 1) - c.top_p * Z) / Z);
      }
      for (int j = 0; j < L; ++j) vis[j] = forced(j) || bin[j] <= bstar;
      out.P.push_back(P);
      out.selected.push_back(vis);
      out.bstar.push_back(bstar);
      ++r;
    } else {
      for (int j = 0; j <= t; ++j)
        vis[j] = c.kinds[g] == HeadKind::DENSE || j < c.sink || j > t - c.window;
    }
    for (int hh = 0; hh < G; ++hh) {
      const int h = g * G + hh;
      std::vector<double> s(L, 0.0);
      double mx = -1e300;
      for (int j = 0; j < L; ++j) {
        if (!vis[j]) continue;
        double d = 0;
        for (int e = 0; e < D; ++e) d += double(q[size_t(h) * D + e]) * k[(size_t(g) * L + j) * D + e];
        s[j] = d * scale;
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      std::vector<double> acc(D, 0.0);
      for (int j = 0; j < L; ++j) {
        if (!vis[j]) continue;
        const double w = std::exp(s[j] - mx);
        z += w;
        for (int e = 0; e < D; ++e) acc[e] += w * v[(size_t(g) * L + j) * D + e];
      }
      for (int e = 0; e < D; ++e) out.o[size_t(h) * D + e] = acc[e] / z;
    }
  }
  return out;
}

// The exact (sorted) top-p set of the definition's quantities: sort the non-forced tokens by P descending and take
// the shortest prefix with sum_F P + prefix >= top_p * Z. Returns its length n and its smallest P (0 when n = 0).
std::pair<int, double> exact_topp_prefix(const std::vector<double>& P, int64_t keep_first, int64_t keep_last,
                                         double top_p) {
  const int L = int(P.size()), t = L - 1;
  double Z = 0, acc = 0;
  std::vector<double> rest;
  for (int j = 0; j < L; ++j) {
    Z += P[j];
    if (j < keep_first || j > t - keep_last) acc += P[j];
    else rest.push_back(P[j]);
  }
  std::sort(rest.rbegin(), rest.rend());
  int n = 0;
  double pmin = 0;
  while (acc < top_p * Z && n < int(rest.size())) acc += rest[n], pmin = rest[n], ++n;
  return {n, pmin};
}

// Runs sparse_decode_cpu on case c: full caches (DENSE and RETRIEVAL heads, ascending KV-head order) and index keys
// of capacity L + 7 whose rows past kv_len are NaN, rings (STREAMING heads) written token by token in slot order
// with never-written slots NaN, so that reading a key the head may not see poisons the output.
struct DecodeRun {
  std::vector<float> o;
  std::vector<int32_t> counts;
};
DecodeRun run_decode_cpu(const DecodeCase& c, const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, const std::vector<float>& iq, const std::vector<float>& ik) {
  const int Hkv = int(c.kinds.size()), D = c.D, L = c.L;
  const int64_t cap = L + 7, ring = c.sink + c.window;
  const float nan = std::nanf("");
  int nfull = 0, nstr = 0, nret = 0;
  for (auto kd : c.kinds) (kd == HeadKind::STREAMING ? nstr : nfull) += 1, nret += kd == HeadKind::RETRIEVAL;
  std::vector<float> kf(size_t(std::max(nfull, 1)) * cap * D, nan), vf(kf.size(), nan);
  std::vector<float> kr(size_t(std::max(nstr, 1)) * ring * D, nan), vr(kr.size(), nan);
  std::vector<float> ikc(size_t(std::max(nret, 1)) * cap * kIndexDim, nan);
  for (int g = 0, f = 0, s = 0, r = 0; g < Hkv; ++g) {
    if (c.kinds[g] == HeadKind::STREAMING) {
      for (int j = 0; j < L; ++j) {
        const int64_t slot = j < c.sink ? j : c.sink + (j - c.sink) % c.window;
        std::copy_n(&k[(size_t(g) * L + j) * D], D, &kr[(size_t(s) * ring + slot) * D]);
        std::copy_n(&v[(size_t(g) * L + j) * D], D, &vr[(size_t(s) * ring + slot) * D]);
      }
      ++s;
      continue;
    }
    std::copy_n(&k[size_t(g) * L * D], size_t(L) * D, &kf[size_t(f) * cap * D]);
    std::copy_n(&v[size_t(g) * L * D], size_t(L) * D, &vf[size_t(f) * cap * D]);
    ++f;
    if (c.kinds[g] == HeadKind::RETRIEVAL) {
      std::copy_n(&ik[size_t(r) * L * kIndexDim], size_t(L) * kIndexDim, &ikc[size_t(r) * cap * kIndexDim]);
      ++r;
    }
  }
  DecodeRun out;
  out.o.assign(size_t(Hkv) * c.G * D, nan);
  out.counts.assign(std::max(nret, 1), -1);
  SparseDecodeParams p;
  p.q = q.data(), p.o = out.o.data();
  p.k_full = kf.data(), p.v_full = vf.data(), p.cap_full = cap;
  p.k_ring = kr.data(), p.v_ring = vr.data();
  p.index_q = iq.data(), p.index_k = ikc.data();
  p.num_q_heads = Hkv * c.G, p.num_kv_heads = Hkv, p.head_dim = D, p.kv_len = L, p.head_kind = c.kinds.data();
  p.sink = c.sink, p.window = c.window, p.top_p = c.top_p, p.keep_first = c.keep_first, p.keep_last = c.keep_last;
  p.selected_count = out.counts.data();
  EXPECT_STREQ(check_sparse_decode_params(p, false), "");
  sparse_decode_cpu(p);
  return out;
}

}  // namespace

// One retrieval KV head (G = 4 query heads, D = 16) decoding at kv_len L on random inputs; seeds seed..seed+4,
// index vectors scaled by index_scale (query) and key_scale (keys). Returns the CPU decode's selected count and
// fills iq / ik with the index vectors it used.
int32_t decode_one_retrieval_head(int L, uint32_t seed, float index_scale, float key_scale, float top_p, int keep,
                                  std::vector<float>& iq, std::vector<float>& ik) {
  const int Hq = 4, D = 16, G = 4;
  auto q = randn(size_t(Hq) * D, seed), k = randn(size_t(L) * D, seed + 1), v = randn(size_t(L) * D, seed + 2);
  iq = randn(size_t(G) * kIndexDim, seed + 3, index_scale);
  ik = randn(size_t(L) * kIndexDim, seed + 4, key_scale);
  const HeadKind kinds[1] = {HeadKind::RETRIEVAL};
  std::vector<float> o(size_t(Hq) * D);
  int32_t cnt = 0;
  SparseDecodeParams pd;
  pd.q = q.data(), pd.o = o.data(), pd.k_full = k.data(), pd.v_full = v.data(), pd.cap_full = L;
  pd.index_q = iq.data(), pd.index_k = ik.data();
  pd.num_q_heads = Hq, pd.num_kv_heads = 1, pd.head_dim = D, pd.kv_len = L, pd.head_kind = kinds;
  pd.keep_first = keep, pd.keep_last = keep, pd.top_p = top_p, pd.selected_count = &cnt;
  sparse_decode_cpu(pd);
  return cnt;
}

// The launch choices are checked with the rest of the parameters: the attend takes 2 or 3 K/V tile stages (0: the
// default), anything else is refused by name.
TEST(SparseDecodeCpu, AttendTileStagesAreChecked) {
  const int Hq = 4, D = 16, L = 32;
  std::vector<float> q(size_t(Hq) * D), o(size_t(Hq) * D), k(size_t(L) * D), v(size_t(L) * D);
  const HeadKind kinds[1] = {HeadKind::DENSE};
  SparseDecodeParams p;
  p.q = q.data(), p.o = o.data(), p.k_full = k.data(), p.v_full = v.data(), p.cap_full = L;
  p.num_q_heads = Hq, p.num_kv_heads = 1, p.head_dim = D, p.kv_len = L, p.head_kind = kinds;
  for (int stages : {0, 2, 3}) {
    p.tuning.attend_tile_stages = stages;
    EXPECT_STREQ(check_sparse_decode_params(p, false), "") << stages;
  }
  for (int stages : {-1, 1, 4}) {
    p.tuning.attend_tile_stages = stages;
    EXPECT_STREQ(check_sparse_decode_params(p, false), "tuning.attend_tile_stages must be 0 (default), 2 or 3")
        << stages;
  }
}

TEST(SparseDecodeCpu, RetrievalSelectionCoversTopP) {
  const int L = 700, G = 4;
  std::vector<float> iq, ik;
  const int32_t cnt = decode_one_retrieval_head(L, 21, 1.f, 1.5f, 0.9f, 16, iq, ik);
  // brute force: sort tokens by P; the exact top-p set over the non-forced tokens needs n tokens
  std::vector<double> P(L, 0);
  for (int h = 0; h < G; ++h) {
    std::vector<double> s(L);
    double mx = -1e300, z = 0;
    for (int j = 0; j < L; ++j) {
      double u = 0;
      for (int d = 0; d < kIndexDim; ++d) u += double(iq[h * kIndexDim + d]) * ik[size_t(j) * kIndexDim + d];
      s[j] = u / 4;
      mx = std::max(mx, s[j]);
    }
    for (int j = 0; j < L; ++j) z += std::exp(s[j] - mx);
    for (int j = 0; j < L; ++j) P[j] += std::exp(s[j] - mx) / z / G;
  }
  double acc = 0;
  std::vector<double> rest;
  for (int j = 0; j < L; ++j)
    if (j < 16 || j > L - 1 - 16) acc += P[j];
    else rest.push_back(P[j]);
  std::sort(rest.rbegin(), rest.rend());
  int need = 32;
  for (size_t n = 0; n < rest.size() && acc < 0.9; ++n) acc += rest[n], ++need;
  EXPECT_GE(cnt, need);
  // Over-selection bounded by one bin (derived in TopPOutputMatchesDefinitionReference): every selected non-forced
  // token has P > 2^(-1/8) x the smallest P of the exact top-p prefix.
  const auto [n, pmin] = exact_topp_prefix(P, 16, 16, 0.9);
  ASSERT_GT(n, 0);
  int within = 0;
  for (int j = 16; j <= L - 1 - 16; ++j) within += P[j] > std::exp2(-1.0 / kDecodeBinsPerOctave) * pmin * (1 - 1e-12);
  EXPECT_LE(cnt, 32 + within);
  EXPECT_LT(cnt, L);
}

// top_p = 1 keeps every token by definition, however sharp the index scores (tail masses far below the rounding
// error of the total must not end the cumulative sum early).
TEST(SparseDecodeCpu, RetrievalTopPOneSelectsAll) {
  const int L = 3000;
  std::vector<float> iq, ik;
  // keep_first / keep_last 64 (the defaults)
  const int32_t cnt = decode_one_retrieval_head(L, 31, 3.f, 3.f, 1.0f, 64, iq, ik);
  EXPECT_EQ(cnt, L);
}

// The decode output with top-p < 1 (and = 1) equals the definition computed from scratch in float64, for mixes of
// RETRIEVAL / STREAMING / DENSE heads (several retrieval slots per call), G 1..5, D 8..40, odd kv lengths, top-p 0.5
// .. 1, keep_first / keep_last from 0 to past the length (all forced), b* = -1 (the forced tokens alone reach
// top-p). Decode selects per token: block_size plays no part in it (it only shapes the prefill lists).
// Also: the selected counts equal the definition's, and the one-bin over-selection bound holds for the counts.
TEST(SparseDecodeCpu, TopPOutputMatchesDefinitionReference) {
  using K = HeadKind;
  std::vector<DecodeCase> cases;
  auto add = [&](std::vector<HeadKind> kinds, int G, int D, int L, float top_p, int64_t kf, int64_t kl, float is,
                 float ks, uint32_t seed) {
    DecodeCase c;
    c.kinds = kinds, c.G = G, c.D = D, c.L = L, c.top_p = top_p, c.keep_first = kf, c.keep_last = kl;
    c.index_scale = is, c.key_scale = ks, c.seed = seed, c.sink = 3, c.window = 41;
    cases.push_back(c);
  };
  add({K::RETRIEVAL, K::STREAMING, K::DENSE}, 2, 24, 301, 0.9f, 16, 16, 1.5f, 1.5f, 100);
  add({K::STREAMING, K::RETRIEVAL, K::DENSE, K::RETRIEVAL}, 3, 40, 777, 0.6f, 64, 64, 2.f, 1.5f, 200);
  add({K::RETRIEVAL, K::RETRIEVAL}, 1, 16, 1501, 0.95f, 5, 7, 1.5f, 1.5f, 300);
  add({K::RETRIEVAL}, 5, 8, 97, 0.5f, 0, 0, 2.f, 2.f, 400);                       // no forced tokens
  add({K::DENSE, K::RETRIEVAL}, 4, 33, 213, 0.75f, 1, 0, 1.f, 3.f, 500);
  add({K::RETRIEVAL}, 2, 16, 200, 0.5f, 90, 90, 0.5f, 0.5f, 600);                  // forced mass reaches top-p
  add({K::RETRIEVAL, K::STREAMING}, 2, 16, 999, 1.0f, 16, 16, 3.f, 3.f, 700);      // top-p 1: every token
  add({K::RETRIEVAL}, 3, 16, 101, 0.9f, 64, 64, 2.f, 2.f, 800);                    // all forced (L < 128)
  add({K::RETRIEVAL, K::DENSE}, 2, 16, 1, 0.7f, 0, 0, 1.f, 1.f, 900);              // one token
  int cut_cases = 0, bstar_minus_one = 0;
  for (const auto& c : cases) {
    const int Hkv = int(c.kinds.size()), Hq = Hkv * c.G, L = c.L;
    const int R = int(std::count(c.kinds.begin(), c.kinds.end(), HeadKind::RETRIEVAL));
    auto q = randn(size_t(Hq) * c.D, c.seed), k = randn(size_t(Hkv) * L * c.D, c.seed + 1);
    auto v = randn(size_t(Hkv) * L * c.D, c.seed + 2);
    auto iq = randn(size_t(R) * c.G * kIndexDim, c.seed + 3, c.index_scale);
    auto ik = randn(size_t(R) * L * kIndexDim, c.seed + 4, c.key_scale);
    const auto ref = decode_reference(c, q, k, v, iq, ik);
    const auto got = run_decode_cpu(c, q, k, v, iq, ik);
    const std::string where = "case seed " + std::to_string(c.seed) + " (L " + std::to_string(L) + ", G " +
                              std::to_string(c.G) + ", D " + std::to_string(c.D) + ", top_p " + std::to_string(c.top_p) + ")";
    // The comparison is well posed: no token's P within 1e-9 of a bin edge and no cut within 1e-12 of top_p Z, so the
    // reference's float64 P (summed in another order than the implementation's) cannot move a token across a rule.
    ASSERT_GT(ref.min_bin_edge_distance, 1e-9) << where;
    ASSERT_GT(ref.min_cut_margin, 1e-12) << where;
    double err = 0;
    for (size_t n = 0; n < ref.o.size(); ++n)
      err = std::max(err, std::fabs(double(got.o[n]) - ref.o[n]) / (1e-3 + std::fabs(ref.o[n])));
    EXPECT_LT(err, 1e-5) << where;  // NaN compares false: a read of a poisoned row fails here too
    for (int r = 0; r < R; ++r) {
      const auto& sel = ref.selected[r];
      const int want = int(std::count(sel.begin(), sel.end(), char(1)));
      EXPECT_EQ(got.counts[r], want) << where << ", retrieval slot " << r;
      // One-bin bound, derived from the definition: mass(b* - 1) < top_p Z, and bins fall as P rises, so the tokens
      // of bins <= b* - 1 are a sorted prefix that misses top_p; the exact top-p prefix (n tokens, smallest P p_min)
      // therefore ends in bin b* or later: p_min <= 2^(-b*/8). Every selected non-forced token has bin <= b*, that
      // is P > 2^(-(b*+1)/8) >= 2^(-1/8) p_min. Conversely the selected set is a sorted prefix whose mass reaches
      // top_p Z, so it holds the exact prefix. Hence (b* <= NB - 2, where bin NB - 1 is not clamped)
      //   |F| + n  <=  count  <=  |F| + #{j not in F : P_j > 2^(-1/8) p_min},  and count = |F| when n = 0.
      if (c.top_p >= 1.f || ref.bstar[r] > kDecodeBins - 2) continue;
      const auto [n, pmin] = exact_topp_prefix(ref.P[r], c.keep_first, c.keep_last, c.top_p);
      int nforced = 0, within = 0;
      for (int j = 0; j < L; ++j) {
        const bool f = j < c.keep_first || j > L - 1 - c.keep_last;
        nforced += f;
        if (!f && n > 0 && ref.P[r][j] > std::exp2(-1.0 / kDecodeBinsPerOctave) * pmin * (1 - 1e-12)) ++within;
      }
      EXPECT_GE(got.counts[r], nforced + n) << where << ", retrieval slot " << r;
      EXPECT_LE(got.counts[r], nforced + within) << where << ", retrieval slot " << r;
      if (n == 0) EXPECT_EQ(got.counts[r], nforced) << where << ", retrieval slot " << r;
      if (want > nforced && want < L) ++cut_cases;
      bstar_minus_one += ref.bstar[r] == -1;
    }
  }
  // The cases exercise what they claim: real cuts (some non-forced tokens dropped) and a b* = -1 case.
  EXPECT_GE(cut_cases, 5);
  EXPECT_GE(bstar_minus_one, 1);
}

namespace {

// Rows [r0, r1) of a [H, T, D] array as a [H, r1 - r0, D] array.
std::vector<float> rows_of(const std::vector<float>& x, int H, int T, int D, int r0, int r1) {
  std::vector<float> out(size_t(H) * (r1 - r0) * D);
  for (int h = 0; h < H; ++h)
    std::copy_n(&x[(size_t(h) * T + r0) * D], size_t(r1 - r0) * D, &out[size_t(h) * (r1 - r0) * D]);
  return out;
}

double max_abs_diff_rows(const std::vector<float>& chunk, const std::vector<float>& whole, int H, int T, int D, int r0,
                         int r1) {
  double err = 0;
  for (int h = 0; h < H; ++h)
    for (int i = r0; i < r1; ++i)
      for (int d = 0; d < D; ++d)
        err = std::max(err, double(std::fabs(chunk[(size_t(h) * (r1 - r0) + i - r0) * D + d] -
                                             whole[(size_t(h) * T + i) * D + d])));
  return err;
}

}  // namespace

// A chunk of queries at positions [q0, q1) over keys [0, q1) must give exactly the rows [q0, q1) of the one-shot
// call; checked against the independent masked dense (whole T x T masks), with chunk boundaries at block
// multiples (required by the retrieval head) and ragged chunk ends.
TEST(SparseAttentionCpu, ChunkedQueriesEqualOneShot) {
  const int Hq = 6, Hkv = 3, D = 24, T = 64 * 5 + 37, B = 64, nb = (T + B - 1) / B;
  const int64_t sink = 3, window = 50;
  auto q = randn(size_t(Hq) * T * D, 31), k = randn(size_t(Hkv) * T * D, 32), v = randn(size_t(Hkv) * T * D, 33);
  const HeadKind kinds[3] = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE};
  std::mt19937 rng(9);
  std::vector<int32_t> counts(nb), idx(size_t(nb) * nb);
  for (int b = 0; b < nb; ++b) {
    int c = 0;
    for (int kb = 0; kb <= b; ++kb)
      if (kb == 0 || kb == b || rng() % 3 == 0) idx[size_t(b) * nb + c++] = kb;
    counts[b] = c;
  }
  std::vector<std::vector<char>> mask(3, std::vector<char>(size_t(T) * T, 0));
  for (int i = 0; i < T; ++i)
    for (int j = 0; j <= i; ++j) {
      const int32_t* l = idx.data() + size_t(i / B) * nb;
      mask[0][size_t(i) * T + j] = std::find(l, l + counts[i / B], j / B) != l + counts[i / B];
      mask[1][size_t(i) * T + j] = j < sink || j > i - window;
      mask[2][size_t(i) * T + j] = 1;
    }
  const auto ref = masked_dense(q, k, v, Hq, Hkv, T, D, mask);
  for (const std::vector<int>& cuts : {std::vector<int>{0, 64, 128, 320, T}, std::vector<int>{0, 192, 201, T},
                                       std::vector<int>{0, 256, 300, 301, T}}) {
    for (size_t n = 0; n + 1 < cuts.size(); ++n) {
      const int q0 = cuts[n], q1 = cuts[n + 1];
      auto qc = rows_of(q, Hq, T, D, q0, q1), kc = rows_of(k, Hkv, T, D, 0, q1), vc = rows_of(v, Hkv, T, D, 0, q1);
      std::vector<float> o(qc.size(), NAN);
      SparseAttentionParams p;
      p.q = qc.data(), p.k = kc.data(), p.v = vc.data(), p.o = o.data();
      p.num_q_heads = Hq, p.num_kv_heads = Hkv, p.seq_len = q1, p.head_dim = D, p.head_kind = kinds;
      p.sink = sink, p.window = window, p.q_offset = q0;
      // the lists of the chunk's query blocks: rows q0/B.. of the whole prompt's lists
      p.block_counts = counts.data() + q0 / B;
      p.block_indices = idx.data() + size_t(q0 / B) * nb;
      p.max_blocks = nb;
      if (q0 % B) {
        EXPECT_STRNE(check_sparse_attention_params(p, false), "") << "unaligned q_offset " << q0 << " accepted";
        continue;
      }
      ASSERT_STREQ(check_sparse_attention_params(p, false), "");
      sparse_attention_cpu(p);
      EXPECT_LT(max_abs_diff_rows(o, ref, Hq, T, D, q0, q1), 1e-5) << "chunk [" << q0 << ", " << q1 << ")";
    }
  }
}

// Streaming heads served from a ring: the call sees the sinks, then only the tokens from the first query's
// window on (stream_key_skip leaves out the rest), for windows smaller and larger than the chunk and chunk
// boundaries at arbitrary positions.
TEST(SparseAttentionCpu, StreamingChunksWithSkippedKeysEqualOneShot) {
  const int Hq = 4, Hkv = 2, D = 20, T = 257;
  auto q = randn(size_t(Hq) * T * D, 41), k = randn(size_t(Hkv) * T * D, 42), v = randn(size_t(Hkv) * T * D, 43);
  const HeadKind kinds[2] = {HeadKind::STREAMING, HeadKind::STREAMING};
  for (int64_t sink : {0, 4}) {
    for (int64_t window : {1, 13, 70, 400}) {
      std::vector<std::vector<char>> mask(2, std::vector<char>(size_t(T) * T, 0));
      for (int i = 0; i < T; ++i)
        for (int j = 0; j <= i; ++j) mask[0][size_t(i) * T + j] = mask[1][size_t(i) * T + j] = j < sink || j > i - window;
      const auto ref = masked_dense(q, k, v, Hq, Hkv, T, D, mask);
      const std::vector<int> cuts = {0, 3, 5, 41, 42, 99, 180, T};
      for (size_t n = 0; n + 1 < cuts.size(); ++n) {
        const int q0 = cuts[n], q1 = cuts[n + 1];
        const int64_t S = std::min<int64_t>(sink, q1);
        const int64_t h0 = std::max<int64_t>(S, q0 - window + 1);  // first non-sink token any query here sees
        const int64_t skip = h0 - S;
        // key rows: tokens [0, S) then [h0, q1)
        std::vector<float> kc(size_t(Hkv) * (q1 - skip) * D), vc(kc.size());
        for (int g = 0; g < Hkv; ++g)
          for (int64_t r = 0; r < q1 - skip; ++r) {
            const int64_t j = r < S ? r : r + skip;
            std::copy_n(&k[(size_t(g) * T + j) * D], D, &kc[(size_t(g) * (q1 - skip) + r) * D]);
            std::copy_n(&v[(size_t(g) * T + j) * D], D, &vc[(size_t(g) * (q1 - skip) + r) * D]);
          }
        auto qc = rows_of(q, Hq, T, D, q0, q1);
        std::vector<float> o(qc.size(), NAN);
        SparseAttentionParams p;
        p.q = qc.data(), p.k = kc.data(), p.v = vc.data(), p.o = o.data();
        p.num_q_heads = Hq, p.num_kv_heads = Hkv, p.seq_len = q1, p.head_dim = D, p.head_kind = kinds;
        p.sink = sink, p.window = window, p.q_offset = q0, p.stream_key_skip = skip;
        ASSERT_STREQ(check_sparse_attention_params(p, false), "");
        sparse_attention_cpu(p);
        EXPECT_LT(max_abs_diff_rows(o, ref, Hq, T, D, q0, q1), 1e-5)
            << "sink " << sink << " window " << window << " chunk [" << q0 << ", " << q1 << ") skip " << skip;
        // one token more left out would hide a key the first query needs
        p.stream_key_skip = skip + 1;
        EXPECT_STRNE(check_sparse_attention_params(p, false), "") << "skip " << skip + 1 << " accepted";
      }
    }
  }
}

// Selection for a chunk of query blocks over all keys so far equals the one-shot selection of those blocks when
// the chunk ends at a block boundary or at the prompt's end.
TEST(SelectBlocksCpu, ChunkedSelectionEqualsOneShot) {
  const int R = 2, G = 3, T = 64 * 9 + 17;
  for (auto [B, S] : {std::pair<int, int>{64, 1}, {128, 1}, {64, 4}, {128, 8}}) {
    const int nb = (T + B - 1) / B;
    auto iq = randn(size_t(R) * G * T * kIndexDim, 51, 1.5f);
    auto ik = randn(size_t(R) * T * kIndexDim, 52, 1.5f);
    BlockSelectParams p;
    p.num_ret_heads = R, p.group_size = G, p.block_size = B, p.local_blocks = 2, p.top_p = 0.8f;
    p.max_blocks = nb, p.query_sub_blocks = S;
    std::vector<int32_t> counts(R * nb), idx(size_t(R) * nb * nb);
    std::vector<float> probs(size_t(R) * nb * nb);
    p.index_q = iq.data(), p.index_k = ik.data(), p.counts = counts.data(), p.indices = idx.data();
    p.block_probs = probs.data(), p.seq_len = T;
    select_blocks_cpu(p);
    for (auto [q0, q1] : {std::pair<int, int>{0, 3 * B}, {B, 4 * B}, {2 * B, T}, {(nb - 1) * B, T}}) {
      const int nqb = (q1 - q0 + B - 1) / B, nbk = (q1 + B - 1) / B;
      // the chunk's index queries [R, G, q1 - q0, 16] and the keys so far [R, q1, 16]
      std::vector<float> cq(size_t(R) * G * (q1 - q0) * kIndexDim), ck(size_t(R) * q1 * kIndexDim);
      for (int r = 0; r < R; ++r) {
        for (int h = 0; h < G; ++h)
          std::copy_n(&iq[((size_t(r) * G + h) * T + q0) * kIndexDim], size_t(q1 - q0) * kIndexDim,
                      &cq[(size_t(r) * G + h) * (q1 - q0) * kIndexDim]);
        std::copy_n(&ik[size_t(r) * T * kIndexDim], size_t(q1) * kIndexDim, &ck[size_t(r) * q1 * kIndexDim]);
      }
      std::vector<int32_t> cc(R * nqb, -1), ci(size_t(R) * nqb * nb, -1);
      std::vector<float> cp(size_t(R) * nqb * nbk);
      BlockSelectParams c = p;
      c.index_q = cq.data(), c.index_k = ck.data(), c.counts = cc.data(), c.indices = ci.data();
      c.block_probs = cp.data(), c.seq_len = q1, c.q_offset = q0;
      ASSERT_STREQ(check_block_select_params(c), "");
      select_blocks_cpu(c);
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < nqb; ++m) {
          const int b = q0 / B + m;
          ASSERT_EQ(cc[r * nqb + m], counts[r * nb + b]) << "B " << B << " chunk [" << q0 << ", " << q1 << ") block " << b;
          for (int n = 0; n < cc[r * nqb + m]; ++n)
            EXPECT_EQ(ci[(size_t(r) * nqb + m) * nb + n], idx[(size_t(r) * nb + b) * nb + n]);
          for (int cb = 0; cb < nbk; ++cb)
            EXPECT_NEAR(cp[(size_t(r) * nqb + m) * nbk + cb], probs[(size_t(r) * nb + b) * nb + cb], 1e-6);
        }
      const double brute_recall = [&] {
        // recall over the chunk's queries from the whole prompt's lists, computed by brute force here
        double tot = 0;
        int64_t n = 0;
        for (int r = 0; r < R; ++r)
          for (int h = 0; h < G; ++h)
            for (int i = q0; i < q1; i += 5) {
              const int b = i / B;
              const int32_t* l = idx.data() + (size_t(r) * nb + b) * nb;
              std::vector<double> s(i + 1);
              double mx = -1e300, z = 0, kept = 0;
              for (int j = 0; j <= i; ++j) {
                double u = 0;
                for (int d = 0; d < kIndexDim; ++d)
                  u += double(iq[((size_t(r) * G + h) * T + i) * kIndexDim + d]) * ik[(size_t(r) * T + j) * kIndexDim + d];
                s[j] = u / 4, mx = std::max(mx, s[j]);
              }
              for (int j = 0; j <= i; ++j) {
                z += std::exp(s[j] - mx);
                if (std::find(l, l + counts[r * nb + b], j / B) != l + counts[r * nb + b]) kept += std::exp(s[j] - mx);
              }
              tot += kept / z, ++n;
            }
        return tot / n;
      }();
      EXPECT_NEAR(selection_recall_cpu(c, 5), brute_recall, 1e-9);
    }
    BlockSelectParams bad = p;
    bad.q_offset = B / 2;
    EXPECT_STRNE(check_block_select_params(bad), "");
  }
}
