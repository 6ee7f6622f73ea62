#include "rtp/sparse/indexer_checkpoint.h"

#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/io/safetensors.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/torch/tensor_io.h"

namespace rtp::sparse {

namespace {

const char* const kReserved[] = {"format", "format_version", "indexer_dim", "head_dim", "head_map", "settings"};

const std::string& need(const std::map<std::string, std::string>& md, const std::string& key,
                        const std::string& path) {
  auto it = md.find(key);
  RTP_CHECK(it != md.end(), "'", path, "': indexer checkpoint metadata lacks \"", key,
            "\" (expected a file written by save_indexer_checkpoint)");
  return it->second;
}

int64_t parse_int(const std::string& s, const std::string& key, const std::string& path) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  RTP_CHECK(used == s.size() && !s.empty(), "'", path, "': metadata \"", key, "\" must be an integer, found \"", s,
            "\"");
  return v;
}

nlohmann::json parse_json(const std::string& s, const std::string& key, const std::string& path) {
  try {
    return nlohmann::json::parse(s);
  } catch (const std::exception& e) {
    RTP_THROW("'", path, "': metadata \"", key, "\" is not valid JSON: ", e.what());
  }
}

}  // namespace

void save_indexer_checkpoint(const std::string& path, const Indexer& indexer, const SparseSettings& settings,
                             const std::map<std::string, std::string>& extra_metadata) {
  RTP_CHECK(indexer.heads().num_layers > 0, "save_indexer_checkpoint('", path,
            "'): the indexer has no head map (default-constructed?)");
  SparseSettings s = settings;
  s.indexer_dim = indexer.dim();
  std::map<std::string, std::string> md = extra_metadata;
  for (const char* k : kReserved)
    RTP_CHECK(!md.count(k), "save_indexer_checkpoint('", path, "'): extra metadata key \"", k, "\" is reserved");
  md["format"] = "rtpurbo-indexer";
  md["format_version"] = std::to_string(kIndexerCheckpointVersion);
  md["indexer_dim"] = std::to_string(indexer.dim());
  md["head_dim"] = std::to_string(indexer.head_dim());
  md["head_map"] = head_map_to_json(indexer.heads()).dump();
  md["settings"] = settings_to_json(s).dump();
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto& [name, t] : indexer.named_parameters()) tensors.emplace_back(name, t.detach());
  save_tensors(path, tensors, md);
}

IndexerCheckpoint load_indexer_checkpoint(const std::string& path, torch::Device device, torch::ScalarType dtype) {
  RTP_CHECK(file_exists(path), "indexer checkpoint '", path, "' does not exist");
  io::SafetensorsFile f(path);
  const auto& md = f.metadata();
  const std::string& format = need(md, "format", path);
  RTP_CHECK(format == "rtpurbo-indexer", "'", path, "': metadata format is \"", format,
            "\", expected \"rtpurbo-indexer\"");
  const int64_t version = parse_int(need(md, "format_version", path), "format_version", path);
  RTP_CHECK(version <= kIndexerCheckpointVersion, "'", path, "' has indexer checkpoint format_version ", version,
            ", but this RTPurbo reads format_version <= ", kIndexerCheckpointVersion,
            ": it was written by a newer RTPurbo; upgrade RTPurbo to load it");
  IndexerCheckpoint ck;
  ck.metadata = md;
  const int64_t dim = parse_int(need(md, "indexer_dim", path), "indexer_dim", path);
  const int64_t head_dim = parse_int(need(md, "head_dim", path), "head_dim", path);
  RTP_CHECK(dim > 0 && head_dim > 0, "'", path, "': indexer_dim and head_dim must be positive, found ", dim, " and ",
            head_dim);
  ck.heads = head_map_from_json(parse_json(need(md, "head_map", path), "head_map", path), path + "\" metadata \"head_map");
  ck.settings = settings_from_json(parse_json(need(md, "settings", path), "settings", path), path + "\" metadata \"settings");
  RTP_CHECK(ck.settings.indexer_dim == dim, "'", path, "': settings.indexer_dim ", ck.settings.indexer_dim,
            " disagrees with indexer_dim ", dim);
  ck.indexer = Indexer(ck.heads, head_dim, dim);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& t : f.tensors()) tensors.emplace_back(t.name, read_tensor(f, t, torch::kCPU));
  ck.indexer.load_named(tensors, path);
  ck.indexer.to(device, dtype);
  return ck;
}

bool is_indexer_checkpoint(const std::string& path) {
  try {
    if (!file_exists(path)) return false;
    io::SafetensorsFile f(path);
    auto it = f.metadata().find("format");
    return it != f.metadata().end() && it->second == "rtpurbo-indexer";
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace rtp::sparse
