// Plain-loop CPU references of sparse_attention_params.h. Written for clarity, not speed: they are the
// definition the CUDA kernels and the model's reference sparse forward are tested against.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "rtp/kernels/sparse_attention.h"

namespace rtp::kernels {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int count_kind(const HeadKind* kinds, int n, HeadKind k) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += kinds[i] == k;
  return c;
}

// Block probabilities P[b, c] (c <= b) of one retrieval slot; exactly the definition in the header.
// b is the absolute query block; index_q rows are positions q_offset.. (Tq of them).
void block_probs_one(const BlockSelectParams& p, int r, int64_t b, std::vector<double>& P) {
  const float* iq = static_cast<const float*>(p.index_q);
  const float* ik = static_cast<const float*>(p.index_k);
  const int64_t T = p.seq_len, B = p.block_size, Tq = T - p.q_offset;
  const int G = p.group_size;
  const int64_t q0 = b * B - p.q_offset, q1 = std::min(Tq, q0 + B);
  const int64_t sb = B / p.query_sub_blocks;             // tokens per sub-block
  const int64_t nsub = (q1 - q0 + sb - 1) / sb;           // sub-blocks holding at least one token < T
  P.assign(b + 1, 0.0);
  std::vector<double> L(b + 1);
  for (int h = 0; h < G; ++h) {
    const float* qh = iq + ((int64_t)r * G + h) * Tq * kIndexDim;
    for (int64_t s = 0; s < nsub; ++s) {
      const int64_t s0 = q0 + s * sb, s1 = std::min(q1, s0 + sb);
      double qbar[kIndexDim] = {0};
      for (int64_t i = s0; i < s1; ++i)
        for (int d = 0; d < kIndexDim; ++d) qbar[d] += qh[i * kIndexDim + d];
      for (int d = 0; d < kIndexDim; ++d) qbar[d] /= double(s1 - s0);
      const float* kr = ik + (int64_t)r * T * kIndexDim;
      double lmax = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c <= b; ++c) {
        const int64_t k0 = c * B, k1 = std::min(T, k0 + B);
        double mx = -std::numeric_limits<double>::infinity(), sum = 0;
        for (int64_t j = k0; j < k1; ++j) {
          double u = 0;
          for (int d = 0; d < kIndexDim; ++d) u += qbar[d] * kr[j * kIndexDim + d];
          u *= 0.25;  // 1/sqrt(16)
          mx = std::max(mx, u);
          sum += u;
        }
        const double n = double(k1 - k0);
        L[c] = std::max(mx, sum / n + std::log(n));
        lmax = std::max(lmax, L[c]);
      }
      double z = 0;
      for (int64_t c = 0; c <= b; ++c) z += std::exp(L[c] - lmax);
      if (p.sub_block_aggregate == BlockAggregate::MAX) {
        for (int64_t c = 0; c <= b; ++c) P[c] = std::max(P[c], std::exp(L[c] - lmax) / z);
      } else {
        // G * nsub is exact in double, so nsub = 1 divides by G exactly as a single pooled query did.
        for (int64_t c = 0; c <= b; ++c) P[c] += std::exp(L[c] - lmax) / z / (double(G) * double(nsub));
      }
    }
  }
  if (p.sub_block_aggregate == BlockAggregate::MAX) {
    double z = 0;
    for (int64_t c = 0; c <= b; ++c) z += P[c];
    for (int64_t c = 0; c <= b; ++c) P[c] /= z;
  }
}

const float* fptr(const void* p) { return static_cast<const float*>(p); }

}  // namespace

const char* check_block_select_params(const BlockSelectParams& p) {
  if (!p.index_q || !p.index_k || !p.counts || !p.indices) return "null pointer among index_q/index_k/counts/indices";
  if (p.num_ret_heads < 1 || p.group_size < 1 || p.seq_len < 1) return "need num_ret_heads, group_size, seq_len >= 1";
  if (!block_size_supported(p.block_size)) return "block_size must be 64 or 128";
  if (p.local_blocks < 1) return "local_blocks must be >= 1";
  if (p.max_blocks < p.local_blocks + 1) return "max_blocks must hold the forced blocks (local_blocks + 1)";
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) return "top_p must be in (0, 1]";
  if (p.q_offset < 0 || p.q_offset >= p.seq_len) return "q_offset must be in [0, seq_len)";
  if (p.q_offset % p.block_size)
    return "q_offset must be a multiple of block_size (a query block split across chunks would pool other queries)";
  if (p.query_sub_blocks < 1 || p.query_sub_blocks > p.block_size || (p.query_sub_blocks & (p.query_sub_blocks - 1)))
    return "query_sub_blocks must be a power of two in [1, block_size] (sub-blocks of equal size tile a query block)";
  if (p.sub_block_aggregate != BlockAggregate::MEAN && p.sub_block_aggregate != BlockAggregate::MAX)
    return "sub_block_aggregate must be MEAN or MAX";
  return "";
}

const char* check_sparse_attention_params(const SparseAttentionParams& p, bool cuda) {
  if (!p.q || !p.k || !p.v || !p.o || !p.head_kind) return "null pointer among q/k/v/o/head_kind";
  if (p.num_kv_heads < 1 || p.num_kv_heads > kMaxKvHeads) return "num_kv_heads must be in [1, 64]";
  if (p.num_q_heads < 1 || p.num_q_heads % p.num_kv_heads) return "num_q_heads must be a multiple of num_kv_heads";
  if (p.seq_len < 1) return "seq_len must be >= 1";
  if (!block_size_supported(p.block_size)) return "block_size must be 64 or 128";
  if (cuda && p.head_dim != 64 && p.head_dim != 128) return "head_dim must be 64 or 128 on the GPU";
  if (cuda && p.dtype != DType::BF16) return "the CUDA kernel takes bf16";
  if (!cuda && p.dtype != DType::F32) return "the CPU reference takes float32";
  if (p.sink < 0 || p.window < 1) return "need sink >= 0 and window >= 1";
  if (p.q_offset < 0 || p.q_offset >= p.seq_len) return "q_offset must be in [0, seq_len)";
  if (count_kind(p.head_kind, p.num_kv_heads, HeadKind::RETRIEVAL) > 0) {
    if (!p.block_counts || !p.block_indices) return "RETRIEVAL heads need block_counts and block_indices";
    if (p.max_blocks < 1) return "max_blocks must be >= 1";
    if (p.q_offset % p.block_size) return "with RETRIEVAL heads q_offset must be a multiple of block_size";
  }
  if (p.q_group) {
    bool seen[kMaxKvHeads] = {};
    for (int g = 0; g < p.num_kv_heads; ++g) {
      if (p.q_group[g] < 0 || p.q_group[g] >= kMaxKvHeads) return "q_group entries must be in [0, 64)";
      if (seen[p.q_group[g]]) return "q_group entries must be distinct (two KV heads would write the same output rows)";
      seen[p.q_group[g]] = true;
    }
  }
  if (p.stream_key_skip < 0) return "stream_key_skip must be >= 0";
  if (p.stream_key_skip > 0) {
    if (count_kind(p.head_kind, p.num_kv_heads, HeadKind::STREAMING) != p.num_kv_heads)
      return "stream_key_skip > 0 needs every KV head to be STREAMING";
    const int64_t S = std::min(p.sink, p.seq_len);
    if (S + p.stream_key_skip > std::max(S, p.q_offset - p.window + 1))
      return "stream_key_skip leaves out tokens inside the first query's window (need sink + skip <= q_offset - window + 1)";
  }
  return "";
}

const char* check_sparse_decode_params(const SparseDecodeParams& p, bool cuda) {
  if (!p.q || !p.o || !p.head_kind) return "null pointer among q/o/head_kind";
  if (p.num_kv_heads < 1 || p.num_kv_heads > kMaxKvHeads) return "num_kv_heads must be in [1, 64]";
  if (p.num_q_heads < 1 || p.num_q_heads % p.num_kv_heads) return "num_q_heads must be a multiple of num_kv_heads";
  if (p.num_q_heads / p.num_kv_heads > 16) return "group size must be <= 16";
  if (p.kv_len < 1) return "kv_len must be >= 1";
  if (cuda && p.head_dim != 64 && p.head_dim != 128) return "head_dim must be 64 or 128 on the GPU";
  if (cuda && p.dtype != DType::BF16) return "the CUDA kernel takes bf16";
  if (!cuda && (p.dtype != DType::F32 || p.index_dtype != DType::F32)) return "the CPU reference takes float32";
  const DecodeTuning& tu = p.tuning;
  if (tu.streaming_keys_per_block != 0 && (tu.streaming_keys_per_block < 16 || tu.streaming_keys_per_block > 8192))
    return "tuning.streaming_keys_per_block must be 0 (default) or in [16, 8192]";
  if (tu.dense_keys_per_block != 0 && (tu.dense_keys_per_block < 16 || tu.dense_keys_per_block > 8192))
    return "tuning.dense_keys_per_block must be 0 (default) or in [16, 8192]";
  if (!cuda && p.position) return "the CPU reference takes the length on the host (kv_len), not a device position";
  if (tu.retrieval_candidates_per_block != 0 &&
      (tu.retrieval_candidates_per_block < 128 || tu.retrieval_candidates_per_block > 2048))
    return "tuning.retrieval_candidates_per_block must be 0 (default) or in [128, 2048]";
  if (tu.index_rows_per_thread < 0 || tu.index_rows_per_thread > 2)
    return "tuning.index_rows_per_thread must be 0 (default), 1 or 2";
  if (tu.index_tokens_per_block != 0 && (tu.index_tokens_per_block < 256 || tu.index_tokens_per_block > 65536))
    return "tuning.index_tokens_per_block must be 0 (default) or in [256, 65536]";
  if (tu.attend_tile_stages != 0 && tu.attend_tile_stages != 2 && tu.attend_tile_stages != 3)
    return "tuning.attend_tile_stages must be 0 (default), 2 or 3";
  if (tu.shared_carveout < -1 || tu.shared_carveout > 100)
    return "tuning.shared_carveout must be -1 (the driver's choice) or a percentage in [0, 100]";
  if (tu.hist_tokens_per_block != 0 && (tu.hist_tokens_per_block < 256 || tu.hist_tokens_per_block > 65536))
    return "tuning.hist_tokens_per_block must be 0 (default) or in [256, 65536]";
  const int nfull = count_kind(p.head_kind, p.num_kv_heads, HeadKind::DENSE) +
                    count_kind(p.head_kind, p.num_kv_heads, HeadKind::RETRIEVAL);
  const int nret = count_kind(p.head_kind, p.num_kv_heads, HeadKind::RETRIEVAL);
  const int nstr = count_kind(p.head_kind, p.num_kv_heads, HeadKind::STREAMING);
  if (nfull && (!p.k_full || !p.v_full || p.cap_full < p.kv_len)) return "full caches missing or cap_full < kv_len";
  if (nret && (!p.index_q || !p.index_k)) return "RETRIEVAL heads need index_q and index_k";
  if (nstr && (!p.k_ring || !p.v_ring || p.sink < 0 || p.window < 1)) return "STREAMING heads need ring caches, sink >= 0, window >= 1";
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) return "top_p must be in (0, 1]";
  return "";
}

void select_blocks_cpu(const BlockSelectParams& p) {
  if (*check_block_select_params(p) || p.index_dtype != DType::F32) return;
  const int64_t nb = ceil_div(p.seq_len, p.block_size), b0 = p.q_offset / p.block_size, nqb = nb - b0;
  std::vector<double> P;
  std::vector<int64_t> order;
  for (int r = 0; r < p.num_ret_heads; ++r) {
    for (int64_t b = b0; b < nb; ++b) {
      const int64_t li = (int64_t)r * nqb + (b - b0);  // the list of absolute query block b
      block_probs_one(p, r, b, P);
      if (p.block_probs) {
        float* row = p.block_probs + li * nb;
        for (int64_t c = 0; c < nb; ++c) row[c] = c <= b ? float(P[c]) : 0.f;
      }
      std::vector<char> keep(b + 1, 0);
      double forced = 0;
      int nforced = 0;
      for (int64_t c = 0; c <= b; ++c)
        if (is_forced_block(b, c, p.local_blocks)) keep[c] = 1, forced += P[c], ++nforced;
      double m = double(p.top_p) - forced;
      if (m > 0) {
        order.clear();
        for (int64_t c = 0; c <= b; ++c)
          if (!keep[c]) order.push_back(c);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return P[a] > P[c]; });
        const int64_t cap = p.max_blocks - nforced;
        double acc = 0;
        for (int64_t n = 0; n < (int64_t)order.size() && n < cap && acc < m; ++n) {
          keep[order[n]] = 1;
          acc += P[order[n]];
        }
      }
      int32_t* out = p.indices + li * p.max_blocks;
      int cnt = 0;
      for (int64_t c = 0; c <= b; ++c)
        if (keep[c]) out[cnt++] = int32_t(c);
      p.counts[li] = cnt;
    }
  }
}

double selection_recall_cpu(const BlockSelectParams& p, int64_t query_stride) {
  const float* iq = fptr(p.index_q);
  const float* ik = fptr(p.index_k);
  const int64_t T = p.seq_len, B = p.block_size, nb = ceil_div(T, B), Tq = T - p.q_offset, b0 = p.q_offset / B;
  const int64_t nqb = nb - b0;
  double total = 0;
  int64_t n = 0;
  std::vector<double> s(T);
  std::vector<char> sel(nb);
  for (int r = 0; r < p.num_ret_heads; ++r)
    for (int h = 0; h < p.group_size; ++h)
      for (int64_t i = p.q_offset; i < T; i += std::max<int64_t>(1, query_stride)) {
        const int64_t li = (int64_t)r * nqb + i / B - b0;
        std::fill(sel.begin(), sel.end(), 0);
        const int32_t* lst = p.indices + li * p.max_blocks;
        for (int k = 0; k < p.counts[li]; ++k) sel[lst[k]] = 1;
        const float* q = iq + (((int64_t)r * p.group_size + h) * Tq + i - p.q_offset) * kIndexDim;
        double mx = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double u = 0;
          for (int d = 0; d < kIndexDim; ++d) u += double(q[d]) * ik[((int64_t)r * T + j) * kIndexDim + d];
          s[j] = u * 0.25;
          mx = std::max(mx, s[j]);
        }
        double z = 0, kept = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const double e = std::exp(s[j] - mx);
          z += e;
          if (sel[j / B]) kept += e;
        }
        total += kept / z;
        ++n;
      }
  return n ? total / n : 0.0;
}

void sparse_attention_cpu(const SparseAttentionParams& p) {
  if (*check_sparse_attention_params(p, false)) return;
  const int64_t T = p.seq_len, D = p.head_dim, B = p.block_size, nb = ceil_div(T, B);
  const int64_t Tq = T - p.q_offset, nqb = ceil_div(Tq, B), b0 = p.q_offset / B;
  // Key rows and the token each holds (identity unless STREAMING rows skip tokens after the sinks).
  const int64_t S = std::min(p.sink, T), krows = T - p.stream_key_skip;
  auto key_pos = [&](int64_t row) { return row < S ? row : row + p.stream_key_skip; };
  const int G = p.num_q_heads / p.num_kv_heads;
  const double scale = p.scale > 0 ? p.scale : 1.0 / std::sqrt(double(D));
  auto qhs = [&](int64_t s) { return s ? s : Tq * D; };
  auto khs = [&](int64_t s) { return s ? s : krows * D; };
  auto rs = [&](int64_t s) { return s ? s : D; };
  std::vector<int> slot(p.num_kv_heads, -1);
  for (int g = 0, r = 0; g < p.num_kv_heads; ++g)
    if (p.head_kind[g] == HeadKind::RETRIEVAL) slot[g] = r++;
  std::vector<double> s(krows), acc(D);
  std::vector<char> sel(nb);
  for (int h = 0; h < p.num_q_heads; ++h) {
    const int g = h / G;
    const HeadKind kind = p.head_kind[g];
    const int64_t qh = (p.q_group ? p.q_group[g] : g) * int64_t(G) + h % G;  // the query head in q and o
    const float* q = fptr(p.q) + qh * qhs(p.q_head_stride);
    const float* k = fptr(p.k) + g * khs(p.k_head_stride);
    const float* v = fptr(p.v) + g * khs(p.v_head_stride);
    float* o = static_cast<float*>(p.o) + qh * qhs(p.o_head_stride);
    for (int64_t iq = 0; iq < Tq; ++iq) {
      const int64_t i = p.q_offset + iq;  // the query's position
      if (kind == HeadKind::RETRIEVAL) {
        std::fill(sel.begin(), sel.end(), 0);
        const int64_t li = (int64_t)slot[g] * nqb + i / B - b0;
        const int32_t* lst = p.block_indices + li * p.max_blocks;
        for (int n = 0; n < p.block_counts[li]; ++n) sel[lst[n]] = 1;
      }
      double mx = -1e300;
      for (int64_t row = 0; row < krows; ++row) {
        const int64_t j = key_pos(row);
        const bool vis = j <= i && (kind == HeadKind::RETRIEVAL ? bool(sel[j / B])
                                                                : visible_by_kind(kind, i, j, p.sink, p.window));
        if (!vis) {
          s[row] = -1e300;
          continue;
        }
        double d = 0;
        for (int64_t e = 0; e < D; ++e) d += double(q[iq * rs(p.q_row_stride) + e]) * k[row * rs(p.k_row_stride) + e];
        s[row] = d * scale;
        mx = std::max(mx, s[row]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      double z = 0;
      for (int64_t row = 0; row < krows; ++row) {
        if (s[row] <= -1e299) continue;
        const double e = std::exp(s[row] - mx);
        z += e;
        for (int64_t d = 0; d < D; ++d) acc[d] += e * v[row * rs(p.v_row_stride) + d];
      }
      for (int64_t d = 0; d < D; ++d) o[iq * rs(p.o_row_stride) + d] = z > 0 ? float(acc[d] / z) : 0.f;
    }
  }
}

void sparse_decode_cpu(const SparseDecodeParams& p) {
  if (*check_sparse_decode_params(p, false)) return;
  const int64_t D = p.head_dim, L = p.kv_len, t = L - 1;
  const int G = p.num_q_heads / p.num_kv_heads;
  const double scale = p.scale > 0 ? p.scale : 1.0 / std::sqrt(double(D));
  const int64_t ring = p.sink + p.window;
  int nfull = 0, nstr = 0, nret = 0;
  std::vector<double> s, P;
  std::vector<char> sel;
  for (int g = 0; g < p.num_kv_heads; ++g) {
    const HeadKind kind = p.head_kind[g];
    // Keys visible to this head: (row pointer into the cache) per key.
    std::vector<const float*> krow, vrow;
    if (kind == HeadKind::STREAMING) {
      const float* kr = fptr(p.k_ring) + nstr * ring * D;
      const float* vr = fptr(p.v_ring) + nstr * ring * D;
      ++nstr;
      for (int64_t j = 0; j <= t; ++j) {
        if (!visible_by_kind(kind, t, j, p.sink, p.window)) continue;
        const int64_t slot = j < p.sink ? j : p.sink + (j - p.sink) % p.window;
        krow.push_back(kr + slot * D);
        vrow.push_back(vr + slot * D);
      }
    } else {
      const float* kf = fptr(p.k_full) + nfull * p.cap_full * D;
      const float* vf = fptr(p.v_full) + nfull * p.cap_full * D;
      ++nfull;
      sel.assign(L, 1);
      if (kind == HeadKind::RETRIEVAL) {
        const float* ik = fptr(p.index_k) + nret * p.cap_full * kIndexDim;
        P.assign(L, 0.0);
        s.resize(L);
        for (int hh = 0; hh < G; ++hh) {
          const float* iq = fptr(p.index_q) + ((int64_t)nret * G + hh) * kIndexDim;
          double mx = -1e300;
          for (int64_t j = 0; j < L; ++j) {
            double u = 0;
            for (int d = 0; d < kIndexDim; ++d) u += double(iq[d]) * ik[j * kIndexDim + d];
            s[j] = u * 0.25;
            mx = std::max(mx, s[j]);
          }
          double z = 0;
          for (int64_t j = 0; j < L; ++j) z += std::exp(s[j] - mx);
          for (int64_t j = 0; j < L; ++j) P[j] += std::exp(s[j] - mx) / z / G;
        }
        std::vector<double> hist(kDecodeBins, 0.0);
        double forced = 0;
        std::vector<int> bin(L);
        for (int64_t j = 0; j < L; ++j) {
          const bool f = j < p.keep_first || j > t - p.keep_last;
          bin[j] = P[j] > 0 ? int(std::min<double>(kDecodeBins - 1, std::max(0.0, std::floor(-kDecodeBinsPerOctave * std::log2(P[j])))))
                            : kDecodeBins - 1;
          if (f) forced += P[j];
          else hist[bin[j]] += P[j];
        }
        int bstar = kDecodeBins - 1;
        if (p.top_p < 1.f) {
          double Z = forced;
          for (int bb = 0; bb < kDecodeBins; ++bb) Z += hist[bb];
          const double need = double(p.top_p) * Z;
          double acc = forced;
          if (acc >= need) bstar = -1;
          else
            for (int bb = 0; bb < kDecodeBins; ++bb) {
              acc += hist[bb];
              if (acc >= need) { bstar = bb; break; }
            }
        }
        int32_t cnt = 0;
        for (int64_t j = 0; j < L; ++j) {
          sel[j] = (j < p.keep_first || j > t - p.keep_last || bin[j] <= bstar);
          cnt += sel[j];
        }
        if (p.selected_count) p.selected_count[nret] = cnt;
        ++nret;
      }
      for (int64_t j = 0; j < L; ++j)
        if (sel[j]) krow.push_back(kf + j * D), vrow.push_back(vf + j * D);
    }
    for (int hh = 0; hh < G; ++hh) {
      const int h = g * G + hh;
      const float* q = fptr(p.q) + h * D;
      std::vector<double> sc(krow.size());
      double mx = -1e300;
      for (size_t n = 0; n < krow.size(); ++n) {
        double d = 0;
        for (int64_t e = 0; e < D; ++e) d += double(q[e]) * krow[n][e];
        sc[n] = d * scale;
        mx = std::max(mx, sc[n]);
      }
      std::vector<double> acc(D, 0.0);
      double z = 0;
      for (size_t n = 0; n < krow.size(); ++n) {
        const double e = std::exp(sc[n] - mx);
        z += e;
        for (int64_t d = 0; d < D; ++d) acc[d] += e * vrow[n][d];
      }
      float* o = static_cast<float*>(p.o) + h * D;
      for (int64_t d = 0; d < D; ++d) o[d] = float(acc[d] / z);
    }
  }
}

}  // namespace rtp::kernels
