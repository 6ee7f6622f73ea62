#include "rtp/heads/head_selection.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>

#include "rtp/core/error.h"

namespace rtp::heads {

Aggregation parse_aggregation(const std::string& name) {
  if (name == "max") return Aggregation::kMax;
  if (name == "mean") return Aggregation::kMean;
  RTP_THROW("unknown aggregation '", name, "': expected max or mean");
}

std::string aggregation_name(Aggregation a) { return a == Aggregation::kMax ? "max" : "mean"; }

static void check_sizes(const char* what, size_t n, int64_t layers, int64_t heads) {
  RTP_CHECK(layers > 0 && heads > 0 && static_cast<int64_t>(n) == layers * heads, what, ": expected ", layers, " x ",
            heads, " = ", layers * heads, " scores, found ", n);
}

std::vector<float> aggregate_to_kv(const std::vector<float>& q_scores, int64_t layers, int64_t q_heads,
                                   int64_t kv_heads, Aggregation aggregation) {
  RTP_CHECK(kv_heads > 0 && q_heads % kv_heads == 0, "aggregate_to_kv: ", q_heads,
            " query heads do not split into ", kv_heads, " KV heads");
  check_sizes("aggregate_to_kv", q_scores.size(), layers, q_heads);
  const int64_t G = q_heads / kv_heads;
  std::vector<float> out(static_cast<size_t>(layers * kv_heads));
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t g = 0; g < kv_heads; ++g) {
      const float* p = q_scores.data() + l * q_heads + g * G;
      double v = aggregation == Aggregation::kMax ? *std::max_element(p, p + G) : std::accumulate(p, p + G, 0.0) / G;
      out[l * kv_heads + g] = static_cast<float>(v);
    }
  return out;
}

std::vector<int64_t> rank_heads(const std::vector<float>& primary, const std::vector<float>& secondary) {
  RTP_CHECK(primary.size() == secondary.size(), "rank_heads: ", primary.size(), " primary scores but ",
            secondary.size(), " secondary");
  std::vector<int64_t> idx(primary.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    if (primary[a] != primary[b]) return primary[a] > primary[b];
    if (secondary[a] != secondary[b]) return secondary[a] > secondary[b];
    return a < b;
  });
  return idx;
}

std::string SelectionRule::describe() const {
  std::string unit = per_query_head ? "query heads" : "KV heads";
  if (kind == Kind::kFraction) return str_cat("fraction ", fraction, " of ", unit, " (aggregation ",
                                              aggregation_name(aggregation), ")");
  return str_cat("kv_budget ", budget_bytes, " bytes = ", bytes_per_kv_head() ? budget_bytes / bytes_per_kv_head() : 0,
                 " KV heads of ", bytes_per_kv_head(), " bytes (", budget_context, " tokens x 2 x head_dim ", head_dim,
                 " x ", bytes_per_element, " bytes), ranking ", unit, " (aggregation ", aggregation_name(aggregation),
                 ")");
}

int64_t HeadSelection::count_kv() const { return std::count(selected_kv.begin(), selected_kv.end(), 1); }
int64_t HeadSelection::count_q() const { return std::count(selected_q.begin(), selected_q.end(), 1); }

HeadSelection select_heads(const std::vector<float>& retrieval, const std::vector<float>& long_range,
                           int64_t layers, int64_t q_heads, int64_t kv_heads, const SelectionRule& rule) {
  check_sizes("select_heads (retrieval)", retrieval.size(), layers, q_heads);
  check_sizes("select_heads (long_range)", long_range.size(), layers, q_heads);
  HeadSelection s;
  s.kv_retrieval = aggregate_to_kv(retrieval, layers, q_heads, kv_heads, rule.aggregation);
  s.kv_long_range = aggregate_to_kv(long_range, layers, q_heads, kv_heads, rule.aggregation);
  s.selected_kv.assign(static_cast<size_t>(layers * kv_heads), 0);
  s.selected_q.assign(static_cast<size_t>(layers * q_heads), 0);
  const int64_t G = q_heads / kv_heads;

  // KV-head budget (in heads) for kBudget; units to keep for kFraction.
  int64_t max_kv = layers * kv_heads;
  if (rule.kind == SelectionRule::Kind::kBudget) {
    RTP_CHECK(rule.budget_context > 0 && rule.head_dim > 0 && rule.bytes_per_element > 0,
              "kv budget accounting needs positive context, head_dim and bytes per element; found ",
              rule.budget_context, ", ", rule.head_dim, ", ", rule.bytes_per_element);
    max_kv = std::min(max_kv, rule.budget_bytes / rule.bytes_per_kv_head());
    RTP_CHECK(max_kv >= 1, "--kv-budget ", rule.budget_bytes, " bytes holds no retrieval KV head: one costs ",
              rule.bytes_per_kv_head(), " bytes (", rule.budget_context, " tokens x 2 (K and V) x head_dim ",
              rule.head_dim, " x ", rule.bytes_per_element, " bytes)");
  } else {
    RTP_CHECK(rule.fraction >= 0 && rule.fraction <= 1, "--retrieval-fraction must be in [0, 1], found ",
              rule.fraction);
  }

  if (!rule.per_query_head) {
    const int64_t n = layers * kv_heads;
    int64_t keep = rule.kind == SelectionRule::Kind::kFraction
                       ? std::clamp<int64_t>(std::llround(rule.fraction * static_cast<double>(n)), 1, n)
                       : max_kv;
    auto order = rank_heads(s.kv_retrieval, s.kv_long_range);
    for (int64_t i = 0; i < keep; ++i) s.selected_kv[order[i]] = 1;
    for (int64_t l = 0; l < layers; ++l)
      for (int64_t h = 0; h < q_heads; ++h) s.selected_q[l * q_heads + h] = s.selected_kv[l * kv_heads + h / G];
    return s;
  }

  // Per query head: rank query heads; their KV heads are implied (and are what the budget pays for).
  const int64_t n = layers * q_heads;
  auto order = rank_heads(retrieval, long_range);
  const int64_t keep_q = rule.kind == SelectionRule::Kind::kFraction
                             ? std::clamp<int64_t>(std::llround(rule.fraction * static_cast<double>(n)), 1, n)
                             : n;
  int64_t kv_used = 0;
  for (int64_t i = 0; i < keep_q; ++i) {
    const int64_t u = order[i], l = u / q_heads, kv = l * kv_heads + (u % q_heads) / G;
    if (!s.selected_kv[kv]) {
      if (kv_used + 1 > max_kv) break;  // the longest prefix of the ranking that fits
      s.selected_kv[kv] = 1;
      ++kv_used;
    }
    s.selected_q[u] = 1;
  }
  return s;
}

int64_t parse_byte_size(const std::string& text) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    RTP_THROW("bad byte size '", text, "': expected a number with an optional unit K, M, G, T (KiB/KB, ...)");
  }
  std::string unit = text.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else RTP_THROW("bad byte size '", text, "': unknown unit '", text.substr(pos), "' (expected K, M, G or T)");
  RTP_CHECK(v > 0 && std::isfinite(v), "bad byte size '", text, "': must be positive");
  return static_cast<int64_t>(std::floor(v * mult));
}

}  // namespace rtp::heads
