#pragma once
// The head profile (DESIGN.md, "Formats"): what rtpurbo-identify-heads measured and chose, as HDF5.
//
// Layout (format version 1):
//   /scores/retrieval     float32 [layers, query heads]  copy + induction mass (rtp/heads/head_scores.h)
//   /scores/long_range    float32 [layers, query heads]  attention mass beyond sink + window
//   /scores/copy          float32 [layers, query heads]  (optional on load)
//   /scores/induction     float32 [layers, query heads]  (optional on load)
//   /kv_scores/retrieval  float32 [layers, kv heads]     aggregated over each GQA group
//   /kv_scores/long_range float32 [layers, kv heads]     (optional on load)
//   /selected_kv          uint8   [layers, kv heads]     1 = retrieval (full-cache) KV head
//   /selected_q           uint8   [layers, query heads]  (optional on load; default: implied by /selected_kv)
//   root attributes: format_version, tool_version, num_layers, num_query_heads, num_kv_heads and every field of
//   CalibrationSettings under its own name.
// Files are written to a temporary name and renamed, so a profile is never half-written.
#include <cstdint>
#include <string>
#include <vector>

#include "rtp/sparse/head_map.h"

namespace rtp::heads {

inline constexpr int64_t kHeadProfileFormatVersion = 1;
inline constexpr const char* kHeadsToolVersion = "0.1.0";

struct CalibrationSettings {
  std::string model_dir;
  std::string calibration = "toy";  // "toy" or "text"
  std::string text_source;          // text file, "builtin" or "" (toy)
  int64_t num_sequences = 0;
  int64_t seq_len = 0;
  int64_t span_len = 0;
  int64_t window = 0;
  int64_t sink = 0;
  uint64_t seed = 0;
  std::string selection_rule = "fraction";  // "fraction" or "kv_budget"
  double selection_value = 0;               // the fraction, or the budget in bytes
  int64_t budget_context = 0;               // kv_budget: tokens per retrieval head the budget accounts for
  std::string aggregation = "max";
  bool per_query_head = false;
  std::string dtype = "float32";
  int64_t format_version = kHeadProfileFormatVersion;
  std::string tool_version = kHeadsToolVersion;
};

struct HeadProfile {
  int64_t num_layers = 0, num_q_heads = 0, num_kv_heads = 0;
  std::vector<float> retrieval, long_range, copy, induction;  // [layers, q heads]
  std::vector<float> kv_retrieval, kv_long_range;             // [layers, kv heads]
  std::vector<uint8_t> selected_kv;                           // [layers, kv heads]
  std::vector<uint8_t> selected_q;                            // [layers, q heads]
  CalibrationSettings settings;

  int64_t group_size() const { return num_kv_heads ? num_q_heads / num_kv_heads : 0; }
  // Sizes consistent, selections 0/1, selected_q inside selected_kv. Throws naming `origin`.
  void validate(const std::string& origin) const;
};

void save_head_profile(const HeadProfile& profile, const std::string& path);
// Errors name the file and say what is missing or wrong: no such file, not HDF5, missing dataset, wrong shape,
// unsupported format version.
HeadProfile load_head_profile(const std::string& path);

sparse::HeadMap head_map_from_profile(const HeadProfile& profile);

}  // namespace rtp::heads
