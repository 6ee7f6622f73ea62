#pragma once
// From per-query-head scores to the retrieval KV heads: aggregate over each GQA group, rank, select.
// Torch-free (plain vectors), so hand-made scores test it exactly.
#include <cstdint>
#include <string>
#include <vector>

namespace rtp::heads {

// How a KV head's score comes from its group's query heads. Max (default): a KV head must keep its full cache
// if any one of its query heads retrieves (DESIGN.md, "Heads").
enum class Aggregation { kMax, kMean };
Aggregation parse_aggregation(const std::string& name);  // "max" or "mean"
std::string aggregation_name(Aggregation a);

// [layers, q_heads] -> [layers, kv_heads]; query head h belongs to KV head h / (q_heads / kv_heads).
std::vector<float> aggregate_to_kv(const std::vector<float>& q_scores, int64_t layers, int64_t q_heads,
                                   int64_t kv_heads, Aggregation aggregation);

// Indices 0..n-1 ordered by primary descending, then secondary descending, then index ascending (deterministic).
std::vector<int64_t> rank_heads(const std::vector<float>& primary, const std::vector<float>& secondary);

struct SelectionRule {
  enum class Kind { kFraction, kBudget };
  Kind kind = Kind::kFraction;
  // kFraction: keep round(fraction x units) units, at least 1 (units: KV heads, or query heads with
  // per_query_head).
  double fraction = 0.15;
  // kBudget: the largest prefix of the ranking whose retrieval KV heads' full caches fit budget_bytes.
  // Accounting: one retrieval KV head caches K and V for every token of the context, i.e.
  //   bytes_per_kv_head = budget_context x 2 x head_dim x bytes_per_element.
  // Streaming heads' bounded caches ((sink + window) tokens each) are not charged to the budget.
  // With per_query_head a query head costs its KV head once (query heads of an already chosen KV head are free).
  int64_t budget_bytes = 0;
  int64_t budget_context = 0;
  int64_t head_dim = 0;
  int64_t bytes_per_element = 2;
  Aggregation aggregation = Aggregation::kMax;
  bool per_query_head = false;

  int64_t bytes_per_kv_head() const { return budget_context * 2 * head_dim * bytes_per_element; }
  std::string describe() const;  // "fraction 0.15" / "kv_budget 1048576 bytes (...)"
};

struct HeadSelection {
  std::vector<uint8_t> selected_kv;  // [layers, kv_heads]
  std::vector<uint8_t> selected_q;   // [layers, q_heads]: chosen query heads (per_query_head), else implied by KV
  std::vector<float> kv_retrieval, kv_long_range;  // aggregated scores [layers, kv_heads]
  int64_t count_kv() const;
  int64_t count_q() const;
};

// retrieval / long_range: [layers, q_heads]. Ranks by retrieval (ties: long-range mass), selects by `rule`.
// Throws if a budget cannot hold even one KV head (naming the per-head cost).
HeadSelection select_heads(const std::vector<float>& retrieval, const std::vector<float>& long_range,
                           int64_t layers, int64_t q_heads, int64_t kv_heads, const SelectionRule& rule);

// "3G", "512MiB", "1048576", "1.5GB": bytes (K/M/G/T = powers of 1024, with or without "iB"/"B").
int64_t parse_byte_size(const std::string& text);

}  // namespace rtp::heads
