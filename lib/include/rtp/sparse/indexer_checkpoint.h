#pragma once
// The indexer checkpoint that stage-1 training writes and rtpurbo-export reads: one safetensors file holding
// the indexer's tensors under their HF-style names (model.layers.{i}.self_attn.indexer.{q_proj,k_proj}.weight,
// Indexer::named_parameters()) and, in "__metadata__":
//   format          "rtpurbo-indexer"
//   format_version  "1" (newer versions are refused)
//   indexer_dim     the projection width
//   head_dim        the model's head dimension
//   head_map        the head map the indexer was built for, as in rtpurbo.json (headwise_config.h)
//   settings        the sparse settings it was trained with, as in rtpurbo.json
//   + any extra entries the writer passes (e.g. "step", "base_model", "heads_source")
#include <torch/types.h>

#include <map>
#include <string>

#include "rtp/sparse/head_map.h"
#include "rtp/sparse/indexer.h"
#include "rtp/sparse/sparse_settings.h"

namespace rtp::sparse {

constexpr int kIndexerCheckpointVersion = 1;

struct IndexerCheckpoint {
  Indexer indexer;  // tensors in the dtype requested at load
  HeadMap heads;
  SparseSettings settings;  // settings.indexer_dim == indexer.dim()
  std::map<std::string, std::string> metadata;  // every "__metadata__" entry, extras included
};

// Atomic. Tensors are written in their own dtype, from any device. `settings.indexer_dim` is set to
// indexer.dim() in what is written. Keys in `extra_metadata` must not collide with the ones above.
void save_indexer_checkpoint(const std::string& path, const Indexer& indexer, const SparseSettings& settings,
                             const std::map<std::string, std::string>& extra_metadata = {});

// Throws rtp::Error naming the file for a missing/ill-formed metadata entry, a newer format_version, or tensors
// that do not match the head map (missing, unexpected or mis-shaped; via Indexer::load_named).
IndexerCheckpoint load_indexer_checkpoint(const std::string& path, torch::Device device = torch::kCPU,
                                          torch::ScalarType dtype = torch::kFloat32);

// True if `path` is a safetensors file whose metadata says format "rtpurbo-indexer" (does not throw).
bool is_indexer_checkpoint(const std::string& path);

}  // namespace rtp::sparse
