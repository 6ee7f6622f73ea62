#pragma once
// The two JSON descriptions of a converted model's heads and sparse settings:
//
// 1. RTP-LLM's `headwise_config` block in config.json (research/rtp-llm-headwise.md): per layer a string key
//    "0", "1", ... holding one 0/1 per *query* head (1 = full-attention head), plus
//      sink_token_num    = SparseSettings::sink
//      swa_token_num     = SparseSettings::window - 1   (RTP-LLM's window_left: a query at i sees j with
//                          i - j <= swa_token_num, i.e. swa_token_num + 1 keys with itself; our `window`
//                          counts the query itself, kernels/include/rtp/kernels/sparse_attention_params.h)
//      seqlen_threshold  = SparseSettings::dense_below (shorter prompts run dense everywhere)
//    The block cannot carry the indexer, top-p or block sizes; those live in rtpurbo.json.
//    We write it per query head, every query head of a KV group equal to its KV head.
//    Reading comes in two modes (HeadwiseReadMode):
//      kPerKvHead  (our own exports): every KV group must be uniform; a mixed group is an error naming the
//                  layer, the KV head and its query heads.
//      kAnyQueryHead (configs written by others, e.g. RTP-LLM's): a KV head is retrieval if ANY of its query
//                  heads is 1, because such a KV head must keep its whole cache anyway (DESIGN.md "Heads").
//                  The query heads that were 0 in such a group then attend densely too: a conservative
//                  reading that never drops context the source model kept.
//    A layer key missing from the block means "all heads of that layer are retrieval", as in RTP-LLM (which
//    warns); read_headwise_config reports those layers in `missing_layers`.
//
// 2. rtpurbo.json, the toolkit's own description of a converted directory (DESIGN.md "Formats"):
//      {"format": "rtpurbo-converted-model", "format_version": 1,
//       "head_map": {"granularity": "kv_head", "num_layers", "num_kv_heads", "group_size",
//                    "retrieval": [[0/1 per KV head] per layer]},
//       "settings": {"sink", "window", "block_size", "local_blocks", "top_p", "indexer_dim", "dense_below",
//                    "post_rope_indexer", "query_sub_blocks" (absent in older files: 1),
//                    "sub_block_aggregate" ("mean" or "max"; absent in older files: "mean")},
//       "indexer": {"file": "indexer.safetensors", "dim"}        (absent: no indexer)
//       "base_model": "<absolute path of the base checkpoint>", "weights": "symlink" | "copy",
//       "heads_source": "<the heads file given to export>", "indexer_source": "<the indexer checkpoint>",
//       "created_by": "rtpurbo-export ..."}
//    A format_version newer than kConvertedFormatVersion is refused with a message that says to upgrade.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rtp/model/model_config.h"
#include "rtp/sparse/head_map.h"
#include "rtp/sparse/sparse_settings.h"

namespace rtp::sparse {

// ---- RTP-LLM headwise_config ----

enum class HeadwiseReadMode { kPerKvHead, kAnyQueryHead };

struct HeadwiseConfig {
  HeadMap heads;
  int64_t sink_token_num = 4;
  int64_t swa_token_num = 8192;
  int64_t seqlen_threshold = 16384;
  std::vector<int64_t> missing_layers;  // layers without a key (read as all-retrieval)
};

// The block for `heads` (per query head) with sink/window/dense_below from `settings`.
nlohmann::json headwise_config_to_json(const HeadMap& heads, const SparseSettings& settings);
// Parses a `headwise_config` object for a model with `config`'s layer and head counts. `origin` names the file.
HeadwiseConfig read_headwise_config(const nlohmann::json& block, const model::ModelConfig& config,
                                    HeadwiseReadMode mode, const std::string& origin);
// SparseSettings with sink/window/dense_below taken from the block, the rest at their defaults.
SparseSettings settings_from_headwise(const HeadwiseConfig& hw);

// ---- rtpurbo.json ----

nlohmann::json head_map_to_json(const HeadMap& heads);
HeadMap head_map_from_json(const nlohmann::json& j, const std::string& origin);
nlohmann::json settings_to_json(const SparseSettings& s);
// Every key optional (defaults of SparseSettings); unknown keys and bad values are errors naming the key.
SparseSettings settings_from_json(const nlohmann::json& j, const std::string& origin);

struct RtpurboManifest {
  int format_version = 0;
  HeadMap heads;
  SparseSettings settings;
  bool has_indexer = false;
  std::string indexer_file = "indexer.safetensors";  // relative to the directory
  std::string base_model;      // the base checkpoint's directory (absolute)
  std::string weights = "symlink";  // "symlink" or "copy"
  std::string heads_source;    // what --heads named (HDF5 profile or indexer checkpoint)
  std::string indexer_source;  // the indexer checkpoint exported
  std::string created_by;
};

nlohmann::json manifest_to_json(const RtpurboManifest& m);
// Refuses format_version > kConvertedFormatVersion ("written by a newer RTPurbo; upgrade") and < 1.
RtpurboManifest manifest_from_json(const nlohmann::json& j, const std::string& origin);
RtpurboManifest read_manifest(const std::string& rtpurbo_json_path);

// export_converted (converted_model.h) with the provenance fields of rtpurbo.json filled in: heads_source,
// indexer_source and created_by are taken from `provenance`; everything else is derived from the arguments.
struct ExportOptions;
class Indexer;
void export_converted(const ExportOptions& options, const RtpurboManifest& provenance, const HeadMap& heads,
                      const SparseSettings& settings, const Indexer& indexer);

// Checks that `heads` fits `config` (layers, KV heads, group size); `what` names the head map in the message.
void check_heads_fit_model(const HeadMap& heads, const model::ModelConfig& config, const std::string& what);

}  // namespace rtp::sparse
