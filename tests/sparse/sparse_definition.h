#pragma once
// The sparse forward's definition (sparse_attention_params.h) for a prompt, written out again by plain loops in
// double, so that tests can hold an implementation (the toy eval, the sparse cache) to the definition instead of to
// another implementation of it. Shared so that the tests check one written definition, not copies that may drift
// apart; what a test records on top of it (pair counts, decoded rows, per-layer outputs) stays in the test.
// No torch: weights and activations come in as anything indexable ([a][b], [a][b][c]) whose elements convert to
// double exactly (torch accessors over float32 or float64), so that each test keeps the precision it stores.
// Covers query_sub_blocks 1, sub_block_aggregate "mean", local_blocks 1, dense_below 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "rtp/sparse/sparse_settings.h"

namespace rtp::testing {

using VisibilityMask = std::vector<std::vector<char>>;  // [query i][key j]

inline bool streaming_visible(int64_t i, int64_t j, const rtp::sparse::SparseSettings& st) {
  return j <= i && (j < st.sink || j > i - st.window);
}

inline VisibilityMask streaming_visibility(int64_t T, const rtp::sparse::SparseSettings& st) {
  VisibilityMask vis(T, std::vector<char>(T, 0));
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j <= i; ++j) vis[i][j] = streaming_visible(i, j, st);
  return vis;
}

struct IndexVectors {
  std::vector<std::vector<std::vector<double>>> q;  // [query head h of the group][token][indexer dim]
  std::vector<std::vector<double>> k;               // [token][indexer dim]
};

// From the raw weights in the checkpoint's layout, not through Indexer::index_queries / index_keys, so that an
// implementation reading the wrong block fails: q_proj rows block r * G + h belong to query head h of the r-th
// retrieval KV head of the layer (KV head g), k_proj block r to that KV head. q: [Hq][T][D], k: [Hkv][T][D],
// pre-RoPE (post-RoPE for a post_rope_indexer).
template <class WQ, class WK, class Q, class K>
IndexVectors retrieval_index_vectors(const WQ& wq, const WK& wk, const Q& q, const K& k, int64_t r, int64_t g,
                                     int64_t G, int64_t T, int64_t D, int64_t I) {
  const std::vector<std::vector<double>> zeros(T, std::vector<double>(I, 0.0));
  IndexVectors iv{std::vector<std::vector<std::vector<double>>>(G, zeros), zeros};
  for (int64_t i = 0; i < T; ++i)
    for (int64_t e = 0; e < I; ++e) {
      for (int64_t h = 0; h < G; ++h)
        for (int64_t d = 0; d < D; ++d)
          iv.q[h][i][e] += static_cast<double>(wq[(r * G + h) * I + e][d]) * q[g * G + h][i][d];
      for (int64_t d = 0; d < D; ++d) iv.k[i][e] += static_cast<double>(wk[r * I + e][d]) * k[g][i][d];
    }
  return iv;
}

inline double index_score(const std::vector<double>& q, const std::vector<double>& k) {
  double s = 0;
  for (size_t e = 0; e < q.size(); ++e) s += q[e] * k[e];
  return s / std::sqrt(double(q.size()));
}

// One query block's list of key blocks.
struct BlockList {
  std::vector<char> keep;  // [key block 0 .. query block]
  // The smallest change of block mass that would change the list (top_p against the forced mass where an optional
  // block exists; the cut against top_p on either side; the last block taken against the first left), so that a
  // test comparing a float32 implementation can require the decision to lie beyond its rounding. 1e300: none.
  double margin = 1e300;
  int64_t dropped = 0, kept_optional = 0;  // optional blocks (neither block 0 nor the diagonal)
};

// The block lists of a one-shot prefill over the first P tokens: one pooled index query per query block,
// L = max(max u, mean u + log n_c) per key block, softmax over the key blocks, mean over the group, blocks 0 and the
// diagonal forced, the others by descending P (lower index first on ties) until they reach top_p - forced mass.
inline std::vector<BlockList> prompt_block_lists(const IndexVectors& iv, int64_t P,
                                                 const rtp::sparse::SparseSettings& st) {
  const int64_t G = static_cast<int64_t>(iv.q.size()), I = static_cast<int64_t>(iv.k.empty() ? 0 : iv.k[0].size());
  const int64_t B = st.block_size, nb = (P + B - 1) / B;
  std::vector<BlockList> lists(nb);
  for (int64_t qb = 0; qb < nb; ++qb) {
    const int64_t q0 = qb * B, q1 = std::min(P, q0 + B);
    std::vector<double> prob(qb + 1, 0.0);
    for (int64_t h = 0; h < G; ++h) {
      std::vector<double> qbar(I, 0.0);
      for (int64_t i = q0; i < q1; ++i)
        for (int64_t e = 0; e < I; ++e) qbar[e] += iv.q[h][i][e] / double(q1 - q0);
      std::vector<double> L(qb + 1);
      for (int64_t c = 0; c <= qb; ++c) {
        const int64_t j0 = c * B, j1 = std::min(P, j0 + B);
        double mx = -1e300, mean = 0;
        for (int64_t j = j0; j < j1; ++j) {
          const double u = index_score(qbar, iv.k[j]);
          mx = std::max(mx, u);
          mean += u / double(j1 - j0);
        }
        L[c] = std::max(mx, mean + std::log(double(j1 - j0)));
      }
      const double top = *std::max_element(L.begin(), L.end());
      double z = 0;
      for (double x : L) z += std::exp(x - top);
      for (int64_t c = 0; c <= qb; ++c) prob[c] += std::exp(L[c] - top) / z / double(G);
    }
    BlockList& list = lists[qb];
    list.keep.assign(qb + 1, 0);
    double m = st.top_p;
    for (int64_t c = 0; c <= qb; ++c)
      if (c == 0 || c == qb) list.keep[c] = 1, m -= prob[c];
    std::vector<int64_t> order;
    for (int64_t c = 0; c <= qb; ++c)
      if (!list.keep[c]) order.push_back(c);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return prob[a] > prob[c]; });
    if (!order.empty()) list.margin = std::fabs(m);
    if (m > 0) {
      double acc = 0;
      size_t n = 0;
      for (; n < order.size() && acc < m; ++n) list.keep[order[n]] = 1, acc += prob[order[n]];
      if (acc >= m) list.margin = std::min({list.margin, acc - m, m - (acc - prob[order[n - 1]])});
      if (n < order.size()) list.margin = std::min(list.margin, prob[order[n - 1]] - prob[order[n]]);
    }
    for (int64_t c = 1; c < qb; ++c) (list.keep[c] ? list.kept_optional : list.dropped) += 1;
  }
  return lists;
}

// Rows 0 .. P-1 of a T x T mask from the prompt's block lists (rows from P on stay hidden: a caller's own rules).
inline VisibilityMask block_visibility(const std::vector<BlockList>& lists, int64_t T, int64_t P, int64_t B) {
  VisibilityMask vis(T, std::vector<char>(T, 0));
  for (int64_t i = 0; i < P; ++i)
    for (int64_t j = 0; j <= i; ++j) vis[i][j] = lists[i / B].keep[j / B];
  return vis;
}

struct RowNormalizers {
  double visible = 0, causal = 0;  // softmax denominators over the visible keys and over every key j <= i
};

// out[e] = the softmax over the visible keys of q . k_j * scale, applied to v_j. The exponentials are shifted by the
// largest score over every causal key, not only the visible ones, so that the same pass gives the dense row's
// denominator: visible / causal is the share of the dense attention mass the row keeps.
// q: [D], k and v: [T][D], visible: [>= i + 1], out: [D] (taken by value: a torch accessor row is a view).
template <class QRow, class KHead, class VHead, class ORow>
RowNormalizers attend_row(const QRow& q, const KHead& k, const VHead& v, const std::vector<char>& visible, int64_t i,
                          int64_t D, double scale, ORow out) {
  std::vector<double> s(i + 1);
  double mx = -1e300;
  for (int64_t j = 0; j <= i; ++j) {
    double d = 0;
    for (int64_t e = 0; e < D; ++e) d += q[e] * k[j][e];
    s[j] = d * scale;
    mx = std::max(mx, s[j]);
  }
  RowNormalizers z;
  std::vector<double> acc(D, 0.0);
  for (int64_t j = 0; j <= i; ++j) {
    const double w = std::exp(s[j] - mx);
    z.causal += w;
    if (!visible[j]) continue;
    z.visible += w;
    for (int64_t e = 0; e < D; ++e) acc[e] += w * v[j][e];
  }
  for (int64_t e = 0; e < D; ++e) out[e] = acc[e] / z.visible;
  return z;
}

}  // namespace rtp::testing
