#pragma once
// The converted-model directory (DESIGN.md "Formats"): base weights (linked or copied), rtpurbo.json
// (format version, head map, sink, window, indexer dim, top-p, block sizes), indexer.safetensors with HF-style
// names, and the RTP-LLM `headwise_config` block in config.json.
#include <string>

#include "rtp/model/qwen3.h"
#include "rtp/sparse/head_map.h"
#include "rtp/sparse/indexer.h"
#include "rtp/sparse/sparse_settings.h"

namespace rtp::sparse {

constexpr int kConvertedFormatVersion = 1;

struct ConvertedModel {
  model::Qwen3Model model;
  HeadMap heads;
  SparseSettings settings;
  Indexer indexer;
};

// True if `dir` holds rtpurbo.json.
bool is_converted_model_dir(const std::string& dir);
// Loads a converted directory; a plain HF directory whose config.json carries `headwise_config` loads with that
// head map and no indexer (retrieval heads then attend densely).
ConvertedModel load_converted(const std::string& dir, torch::Device device, torch::ScalarType dtype);

struct ExportOptions {
  std::string model_dir;     // base HF checkpoint
  std::string out_dir;
  bool copy_weights = false; // default: symlink the base weight files
};
void export_converted(const ExportOptions& options, const HeadMap& heads, const SparseSettings& settings,
                      const Indexer& indexer);

}  // namespace rtp::sparse
