// CPU references of the sparse-attention contract against independent brute force.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
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

TEST(SparseDecodeCpu, RetrievalSelectionCoversTopP) {
  const int Hq = 4, Hkv = 1, D = 16, L = 700, G = 4;
  auto q = randn(size_t(Hq) * D, 21), k = randn(size_t(L) * D, 22), v = randn(size_t(L) * D, 23);
  auto iq = randn(size_t(G) * kIndexDim, 24, 1.f), ik = randn(size_t(L) * kIndexDim, 25, 1.5f);
  const HeadKind kinds[1] = {HeadKind::RETRIEVAL};
  std::vector<float> o(size_t(Hq) * D);
  int32_t cnt = 0;
  SparseDecodeParams pd;
  pd.q = q.data(), pd.o = o.data(), pd.k_full = k.data(), pd.v_full = v.data(), pd.cap_full = L;
  pd.index_q = iq.data(), pd.index_k = ik.data();
  pd.num_q_heads = Hq, pd.num_kv_heads = Hkv, pd.head_dim = D, pd.kv_len = L, pd.head_kind = kinds;
  pd.keep_first = 16, pd.keep_last = 16, pd.top_p = 0.9f, pd.selected_count = &cnt;
  sparse_decode_cpu(pd);
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
  // over-selection bounded by one bin: every extra token has P >= 2^(-1/8) x the smallest needed one
  EXPECT_LT(cnt, L);
}
