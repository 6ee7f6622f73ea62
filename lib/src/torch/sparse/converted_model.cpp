#include "rtp/sparse/converted_model.h"

#include <ftw.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/io/safetensors.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/torch/tensor_io.h"

namespace rtp::sparse {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifestName = "rtpurbo.json";
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kIndexerName = "indexer.safetensors";

// Files next to the weights that a converted directory carries along (linked or copied with the weights).
const char* const kTokenizerFiles[] = {"tokenizer.json",    "tokenizer_config.json", "vocab.json",
                                       "merges.txt",        "special_tokens_map.json", "added_tokens.json",
                                       "generation_config.json", "chat_template.jinja"};
// Small metadata files always copied (the toy task description lets evaluation regenerate the task).
const char* const kCopiedFiles[] = {"rtpurbo_toy_task.json", "train_recipe.yaml"};

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  RTP_CHECK(::realpath(p.c_str(), buf) != nullptr, "cannot resolve '", p, "'");
  return buf;
}

bool heads_equal(const HeadMap& a, const HeadMap& b) {
  return a.num_layers == b.num_layers && a.num_kv_heads == b.num_kv_heads && a.group_size == b.group_size &&
         a.retrieval == b.retrieval;
}

std::string first_difference(const HeadMap& a, const HeadMap& b) {
  if (a.num_layers != b.num_layers || a.num_kv_heads != b.num_kv_heads || a.group_size != b.group_size)
    return str_cat(a.num_layers, "x", a.num_kv_heads, " (group ", a.group_size, ") vs ", b.num_layers, "x",
                   b.num_kv_heads, " (group ", b.group_size, ")");
  for (int64_t l = 0; l < a.num_layers; ++l)
    for (int64_t g = 0; g < a.num_kv_heads; ++g)
      if (a.retrieval[l][g] != b.retrieval[l][g])
        return str_cat("layer ", l, " KV head ", g, ": ", int(a.retrieval[l][g]), " vs ", int(b.retrieval[l][g]));
  return "none";
}

// The weight files of a base directory: the index and the shards it names, or every *.safetensors.
std::vector<std::string> weight_files(const std::string& base, bool* has_index) {
  std::vector<std::string> out;
  const fs::path root(base);
  *has_index = file_exists((root / kIndexName).string());
  if (*has_index) {
    const json idx = read_json_file((root / kIndexName).string());
    std::set<std::string> seen;
    out.push_back(kIndexName);
    auto wm = idx.find("weight_map");
    RTP_CHECK(wm != idx.end() && wm->is_object(), "'", (root / kIndexName).string(), "': no \"weight_map\" object");
    for (auto it = wm->begin(); it != wm->end(); ++it)
      if (it->is_string() && seen.insert(it->get<std::string>()).second) out.push_back(it->get<std::string>());
  } else if (file_exists((root / "model.safetensors").string())) {
    out.push_back("model.safetensors");  // what Hugging Face loads without an index (other files are not weights)
  } else {
    std::error_code ec;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (it->path().extension() == ".safetensors" && name != kIndexerName) out.push_back(name);
    }
    std::sort(out.begin(), out.end());
  }
  RTP_CHECK(!out.empty(), "'", base, "' has no *.safetensors weights");
  return out;
}

void link_or_copy(const std::string& src, const std::string& dst, bool copy) {
  std::error_code ec;
  if (copy) {
    fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);  // follows symlinks in src
    RTP_CHECK(!ec, "cannot copy '", src, "' to '", dst, "': ", ec.message());
  } else {
    fs::create_symlink(src, dst, ec);
    RTP_CHECK(!ec, "cannot link '", dst, "' -> '", src, "': ", ec.message());
  }
}

// Directory replacement: `tmp` (complete) becomes `out`. An earlier converted directory at `out` is replaced;
// an empty directory too; anything else is refused, so that export never deletes what it did not write.
void commit_directory(const std::string& tmp, const std::string& out) {
  struct stat st;
  if (::lstat(out.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode) && ::rmdir(out.c_str()) == 0) {
      // was empty
    } else {
      RTP_CHECK(S_ISDIR(st.st_mode) && file_exists(out + "/" + kManifestName), "output '", out,
                "' exists and is not an earlier converted model (no ", kManifestName,
                "); refusing to replace it: remove it or choose another --out");
      const std::string old = str_cat(out, ".old.", ::getpid());
      remove_tree(old);
      RTP_CHECK(::rename(out.c_str(), old.c_str()) == 0, "cannot move '", out, "' aside to '", old, "'");
      if (::rename(tmp.c_str(), out.c_str()) != 0) {
        ::rename(old.c_str(), out.c_str());
        RTP_THROW("cannot rename '", tmp, "' to '", out, "'");
      }
      remove_tree(old);
      return;
    }
  }
  RTP_CHECK(::rename(tmp.c_str(), out.c_str()) == 0, "cannot rename '", tmp, "' to '", out, "'");
}

Indexer load_indexer_file(const std::string& path, const HeadMap& heads, const model::ModelConfig& cfg,
                          const SparseSettings& settings, torch::Device device, torch::ScalarType dtype) {
  RTP_CHECK(file_exists(path), "'", path, "' is missing (rtpurbo.json names it as the indexer)");
  Indexer indexer(heads, cfg.head_dim, settings.indexer_dim);
  indexer.load_named(read_all_tensors(path), path);
  indexer.to(device, dtype);
  return indexer;
}

}  // namespace

bool is_converted_model_dir(const std::string& dir) { return file_exists((fs::path(dir) / kManifestName).string()); }

ConvertedModel load_converted(const std::string& dir, torch::Device device, torch::ScalarType dtype) {
  require_directory(dir, "model directory");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  RTP_CHECK(file_exists(config_path), "'", dir, "' has no config.json");
  const json raw = read_json_file(config_path);
  const model::ModelConfig cfg = model::parse_model_config(raw, config_path);
  const bool has_headwise = raw.is_object() && raw.contains("headwise_config") && !raw["headwise_config"].is_null();

  if (is_converted_model_dir(dir)) {
    const std::string mpath = (fs::path(dir) / kManifestName).string();
    RtpurboManifest m = read_manifest(mpath);
    check_heads_fit_model(m.heads, cfg, "'" + mpath + "' head map");
    if (has_headwise) {
      // Our export writes both; a hand-edited config.json that disagrees with rtpurbo.json is ambiguous.
      HeadwiseConfig hw = read_headwise_config(raw["headwise_config"], cfg, HeadwiseReadMode::kPerKvHead, config_path);
      RTP_CHECK(heads_equal(hw.heads, m.heads), "'", config_path, "' headwise_config and '", mpath,
                "' head_map disagree (first difference: ", first_difference(hw.heads, m.heads),
                "); re-export, or fix one of them");
    }
    model::Qwen3Model model = model::load_qwen3(dir, device, dtype);
    Indexer indexer;
    if (m.has_indexer) {
      RTP_CHECK(m.settings.indexer_dim > 0, "'", mpath, "': indexer_dim must be positive");
      indexer = load_indexer_file((fs::path(dir) / m.indexer_file).string(), m.heads, cfg, m.settings, device, dtype);
    }
    return ConvertedModel{std::move(model), std::move(m.heads), m.settings, std::move(indexer)};
  }
  RTP_CHECK(has_headwise, "'", dir, "' is neither a converted model (no ", kManifestName,
            ") nor a checkpoint whose config.json carries \"headwise_config\"");
  HeadwiseConfig hw = read_headwise_config(raw["headwise_config"], cfg, HeadwiseReadMode::kAnyQueryHead, config_path);
  if (!hw.missing_layers.empty()) {
    std::string ls;
    for (auto l : hw.missing_layers) ls += str_cat(ls.empty() ? "" : ",", l);
    std::cerr << "warning: '" << config_path << "' headwise_config has no entry for layer(s) " << ls
              << ": all their heads are full-attention (as RTP-LLM reads it)\n";
  }
  model::Qwen3Model model = model::load_qwen3(dir, device, dtype);
  return ConvertedModel{std::move(model), std::move(hw.heads), settings_from_headwise(hw), Indexer()};
}

void export_converted(const ExportOptions& options, const HeadMap& heads, const SparseSettings& settings,
                      const Indexer& indexer) {
  export_converted(options, RtpurboManifest{}, heads, settings, indexer);
}

void export_converted(const ExportOptions& o, const RtpurboManifest& provenance, const HeadMap& heads,
                      const SparseSettings& settings, const Indexer& indexer) {
  RTP_CHECK(!o.model_dir.empty() && !o.out_dir.empty(), "export needs a base model directory and an output directory");
  require_directory(o.model_dir, "base model directory");
  const std::string base = real_path(o.model_dir);
  const std::string config_path = base + "/config.json";
  RTP_CHECK(file_exists(config_path), "'", o.model_dir, "' has no config.json");
  json config = read_json_file(config_path);
  RTP_CHECK(config.is_object(), "'", config_path, "' is not a JSON object");
  const model::ModelConfig cfg = model::parse_model_config(config, config_path);
  check_heads_fit_model(heads, cfg, "the head map");
  const bool has_indexer = indexer.heads().num_layers > 0;
  if (has_indexer) {
    RTP_CHECK(heads_equal(indexer.heads(), heads), "the indexer was built for a different head map than the one ",
              "exported (first difference: ", first_difference(indexer.heads(), heads),
              "); export the indexer with the head map it was trained for");
    RTP_CHECK(indexer.head_dim() == cfg.head_dim, "the indexer projects head_dim ", indexer.head_dim(),
              ", but the model has head_dim ", cfg.head_dim);
    RTP_CHECK(indexer.dim() == settings.indexer_dim, "settings.indexer_dim ", settings.indexer_dim,
              " disagrees with the indexer's dim ", indexer.dim());
  }
  std::string out = o.out_dir;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  // Resolved, not spelled: "base/", "base/." or a symlink to base would otherwise pass, and the replaced directory's
  // weight links would point at themselves.
  const fs::path out_real = fs::weakly_canonical(fs::absolute(out));
  RTP_CHECK(out_real != fs::path(base), "--out '", o.out_dir, "' is the base model directory itself ('", base,
            "'): write the converted model to another directory");
  bool has_index = false;
  const std::vector<std::string> weights = weight_files(base, &has_index);
  std::vector<std::string> linked = weights;  // weights and tokenizer: linked (or copied), never rewritten
  for (const auto& f : weights)
    RTP_CHECK(file_exists(base + "/" + f), "'", base, "': weight file '", f, "' does not exist");
  for (const char* f : kTokenizerFiles)
    if (file_exists(base + "/" + f)) linked.emplace_back(f);
  for (const auto& f : linked) {
    // A converted model's files are links to its base: exporting one over the directory they resolve into would
    // delete the files the new links point at.
    const fs::path target = real_path(base + "/" + f);
    const auto rel = target.lexically_relative(out_real);
    RTP_CHECK(rel.empty() || *rel.begin() == "..", "--out '", o.out_dir, "' would replace '", target.string(),
              "', a file of the base model '", o.model_dir, "': write the converted model to another directory");
  }
  const std::string tmp = str_cat(out, ".tmp.", ::getpid());
  // An export interrupted by a signal leaves its directory (copied weights included) under its own pid.
  remove_stale_temporaries(fs::path(out).parent_path().empty() ? "." : fs::path(out).parent_path().string(),
                           fs::path(out).filename().string());
  remove_tree(tmp);
  make_directories(tmp);
  try {
    // Links go to the resolved file, so that a model converted from a converted model does not hang on a chain.
    for (const auto& f : linked) link_or_copy(real_path(base + "/" + f), tmp + "/" + f, o.copy_weights);
    if (!has_index) {
      // Name the base shards in an index, so that indexer.safetensors is never mistaken for a weight shard
      // (loaders that scan every *.safetensors would otherwise pick it up).
      json wm = json::object();
      uint64_t total = 0;
      for (const auto& name : weights) {
        const io::SafetensorsFile f(base + "/" + name);
        for (const auto& t : f.tensors()) {
          wm[t.name] = name;
          total += t.nbytes();
        }
      }
      write_json_atomic(tmp + "/" + kIndexName, {{"metadata", {{"total_size", total}}}, {"weight_map", wm}});
    }
    for (const char* f : kCopiedFiles)
      if (file_exists(base + "/" + f)) link_or_copy(base + "/" + f, tmp + "/" + f, true);

    config["headwise_config"] = headwise_config_to_json(heads, settings);
    write_json_atomic(tmp + "/config.json", config);

    RtpurboManifest m = provenance;
    m.format_version = kConvertedFormatVersion;
    m.heads = heads;
    m.settings = settings;
    m.has_indexer = has_indexer;
    m.indexer_file = kIndexerName;
    m.base_model = base;
    m.weights = o.copy_weights ? "copy" : "symlink";
    if (has_indexer) save_indexer_checkpoint(tmp + "/" + kIndexerName, indexer, settings, {{"base_model", base}});
    write_json_atomic(tmp + "/" + kManifestName, manifest_to_json(m));
    commit_directory(tmp, out);
  } catch (...) {
    try {
      remove_tree(tmp);
    } catch (...) {
      // The export's own error is the one to report.
    }
    throw;
  }
}

}  // namespace rtp::sparse
