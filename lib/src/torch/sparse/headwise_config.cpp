#include "rtp/sparse/headwise_config.h"

#include <set>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/sparse/converted_model.h"

namespace rtp::sparse {

using nlohmann::json;

namespace {

int64_t get_int(const json& j, const char* key, int64_t def, int64_t min_value, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end()) return def;
  RTP_CHECK(it->is_number_integer(), "'", origin, "': \"", key, "\" must be an integer, found ", it->dump());
  const int64_t v = it->get<int64_t>();
  RTP_CHECK(v >= min_value, "'", origin, "': \"", key, "\" must be >= ", min_value, ", found ", v);
  return v;
}

std::string get_string(const json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  RTP_CHECK(it->is_string(), "'", origin, "': \"", key, "\" must be a string, found ", it->dump());
  return it->get<std::string>();
}

bool is_layer_key(const std::string& k) {
  if (k.empty() || k.size() > 9) return false;
  for (char c : k)
    if (c < '0' || c > '9') return false;
  return true;
}

}  // namespace

void check_heads_fit_model(const HeadMap& heads, const model::ModelConfig& c, const std::string& what) {
  heads.validate(what);
  RTP_CHECK(heads.num_layers == c.num_hidden_layers && heads.num_kv_heads == c.num_key_value_heads &&
                heads.group_size == c.group_size(),
            what, " is for ", heads.num_layers, " layers x ", heads.num_kv_heads, " KV heads (group size ",
            heads.group_size, "), but the model has ", c.num_hidden_layers, " layers x ", c.num_key_value_heads,
            " KV heads (group size ", c.group_size(), ")");
}

// ---- RTP-LLM headwise_config ----

json headwise_config_to_json(const HeadMap& heads, const SparseSettings& s) {
  heads.validate("head map");
  RTP_CHECK(s.window >= 1, "window must be >= 1 to express it as swa_token_num, found ", s.window);
  json j = json::object();
  j["sink_token_num"] = s.sink;
  j["swa_token_num"] = s.window - 1;  // RTP-LLM's window_left excludes the query itself
  j["seqlen_threshold"] = s.dense_below;
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    json row = json::array();
    for (int64_t g = 0; g < heads.num_kv_heads; ++g)
      for (int64_t q = 0; q < heads.group_size; ++q) row.push_back(heads.is_retrieval(l, g) ? 1 : 0);
    j[std::to_string(l)] = std::move(row);
  }
  return j;
}

HeadwiseConfig read_headwise_config(const json& block, const model::ModelConfig& c, HeadwiseReadMode mode,
                                    const std::string& origin) {
  RTP_CHECK(block.is_object(), "'", origin, "': \"headwise_config\" must be an object, found ", block.type_name());
  HeadwiseConfig hw;
  hw.sink_token_num = get_int(block, "sink_token_num", 4, 0, origin);
  hw.swa_token_num = get_int(block, "swa_token_num", 8192, 0, origin);
  hw.seqlen_threshold = get_int(block, "seqlen_threshold", 16384, 0, origin);
  const int64_t L = c.num_hidden_layers, Hkv = c.num_key_value_heads, G = c.group_size(), Hq = c.num_attention_heads;
  hw.heads = HeadMap::all_streaming(L, Hkv, G);
  std::set<int64_t> seen;
  for (auto it = block.begin(); it != block.end(); ++it) {
    const std::string& key = it.key();
    if (key == "sink_token_num" || key == "swa_token_num" || key == "seqlen_threshold") continue;
    RTP_CHECK(is_layer_key(key), "'", origin, "': headwise_config key \"", key,
              "\" is neither a layer index (\"0\", \"1\", ...) nor sink_token_num/swa_token_num/seqlen_threshold");
    const int64_t layer = std::stoll(key);
    RTP_CHECK(layer < L, "'", origin, "': headwise_config has layer \"", key, "\", but the model has ", L,
              " layers (0..", L - 1, ")");
    const json& row = it.value();
    RTP_CHECK(row.is_array() && static_cast<int64_t>(row.size()) == Hq, "'", origin, "': headwise_config layer ",
              layer, " must list one 0/1 per query head (", Hq, " = num_attention_heads), found ",
              row.is_array() ? str_cat(row.size(), " entries") : std::string(row.type_name()));
    std::vector<int> flags(Hq);
    for (int64_t h = 0; h < Hq; ++h) {
      const json& v = row[h];
      int f = -1;
      if (v.is_boolean()) f = v.get<bool>() ? 1 : 0;
      else if (v.is_number_integer()) f = static_cast<int>(v.get<int64_t>());
      RTP_CHECK(f == 0 || f == 1, "'", origin, "': headwise_config layer ", layer, " query head ", h,
                " must be 0 or 1, found ", v.dump());
      flags[h] = f;
    }
    for (int64_t g = 0; g < Hkv; ++g) {
      int any = 0, all = 1;
      for (int64_t q = 0; q < G; ++q) {
        any |= flags[g * G + q];
        all &= flags[g * G + q];
      }
      if (mode == HeadwiseReadMode::kPerKvHead && any != all) {
        std::string values;
        for (int64_t q = 0; q < G; ++q) values += str_cat(q ? "," : "", flags[g * G + q]);
        RTP_THROW("'", origin, "': headwise_config layer ", layer, " KV head ", g, " has query heads ", g * G,
                  "..", g * G + G - 1, " = [", values,
                  "]: mixed full/streaming within one KV group; expected all 0 or all 1 (selection is per KV "
                  "head: the KV head keeps its whole cache if any of its query heads needs it)");
      }
      hw.heads.retrieval[layer][g] = static_cast<uint8_t>(any);
    }
    seen.insert(layer);
  }
  for (int64_t l = 0; l < L; ++l)
    if (!seen.count(l)) {
      hw.missing_layers.push_back(l);
      for (int64_t g = 0; g < Hkv; ++g) hw.heads.retrieval[l][g] = 1;  // RTP-LLM: missing layer = all full
    }
  return hw;
}

SparseSettings settings_from_headwise(const HeadwiseConfig& hw) {
  SparseSettings s;
  s.sink = hw.sink_token_num;
  s.window = hw.swa_token_num + 1;
  s.dense_below = hw.seqlen_threshold;
  return s;
}

// ---- rtpurbo.json ----

json head_map_to_json(const HeadMap& heads) {
  heads.validate("head map");
  json rows = json::array();
  for (const auto& layer : heads.retrieval) {
    json row = json::array();
    for (auto v : layer) row.push_back(static_cast<int>(v));
    rows.push_back(std::move(row));
  }
  return {{"granularity", "kv_head"},
          {"num_layers", heads.num_layers},
          {"num_kv_heads", heads.num_kv_heads},
          {"group_size", heads.group_size},
          {"retrieval", std::move(rows)}};
}

HeadMap head_map_from_json(const json& j, const std::string& origin) {
  RTP_CHECK(j.is_object(), "'", origin, "': \"head_map\" must be an object, found ", j.type_name());
  const std::string gran = get_string(j, "granularity", origin);
  RTP_CHECK(gran.empty() || gran == "kv_head", "'", origin, "': head_map granularity \"", gran,
            "\" is not supported (expected \"kv_head\")");
  HeadMap m;
  m.num_layers = get_int(j, "num_layers", 0, 1, origin);
  m.num_kv_heads = get_int(j, "num_kv_heads", 0, 1, origin);
  m.group_size = get_int(j, "group_size", 0, 1, origin);
  RTP_CHECK(m.num_layers > 0 && m.num_kv_heads > 0 && m.group_size > 0, "'", origin,
            "': head_map needs num_layers, num_kv_heads and group_size");
  auto it = j.find("retrieval");
  RTP_CHECK(it != j.end() && it->is_array() && static_cast<int64_t>(it->size()) == m.num_layers, "'", origin,
            "': head_map \"retrieval\" must be an array of ", m.num_layers, " layers");
  for (int64_t l = 0; l < m.num_layers; ++l) {
    const json& row = (*it)[l];
    RTP_CHECK(row.is_array() && static_cast<int64_t>(row.size()) == m.num_kv_heads, "'", origin,
              "': head_map layer ", l, " must list ", m.num_kv_heads, " KV heads, found ", row.dump());
    std::vector<uint8_t> r;
    for (const auto& v : row) {
      RTP_CHECK(v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1), "'", origin,
                "': head_map layer ", l, " values must be 0 or 1, found ", v.dump());
      r.push_back(static_cast<uint8_t>(v.get<int64_t>()));
    }
    m.retrieval.push_back(std::move(r));
  }
  m.validate(origin);
  return m;
}

json settings_to_json(const SparseSettings& s) {
  return {{"sink", s.sink},           {"window", s.window},           {"block_size", s.block_size},
          {"local_blocks", s.local_blocks}, {"top_p", s.top_p},       {"indexer_dim", s.indexer_dim},
          {"dense_below", s.dense_below},   {"post_rope_indexer", s.post_rope_indexer},
          {"query_sub_blocks", s.query_sub_blocks}, {"sub_block_aggregate", s.sub_block_aggregate}};
}

SparseSettings settings_from_json(const json& j, const std::string& origin) {
  RTP_CHECK(j.is_object(), "'", origin, "': \"settings\" must be an object, found ", j.type_name());
  static const std::set<std::string> known = {"sink",        "window",      "block_size",  "local_blocks",
                                              "top_p",       "indexer_dim", "dense_below", "post_rope_indexer",
                                              "query_sub_blocks", "sub_block_aggregate"};
  for (auto it = j.begin(); it != j.end(); ++it)
    RTP_CHECK(known.count(it.key()), "'", origin, "': unknown settings key \"", it.key(), "\"");
  SparseSettings s;
  s.sink = get_int(j, "sink", s.sink, 0, origin);
  s.window = get_int(j, "window", s.window, 1, origin);
  s.block_size = get_int(j, "block_size", s.block_size, 1, origin);
  // Checked where settings enter (here, recipes, rtpurbo-export): a converted model never fails at its first prefill.
  RTP_CHECK(kernels::block_size_supported(s.block_size), "'", origin,
            "': \"block_size\" must be 64 or 128 (the selection and prefill kernels' tile), found ", s.block_size);
  s.local_blocks = get_int(j, "local_blocks", s.local_blocks, 0, origin);
  s.indexer_dim = get_int(j, "indexer_dim", s.indexer_dim, 1, origin);
  s.dense_below = get_int(j, "dense_below", s.dense_below, 0, origin);
  // Files written before sub-blocks existed have no key: one pooled query per block, what they were made with.
  s.query_sub_blocks = get_int(j, "query_sub_blocks", s.query_sub_blocks, 1, origin);
  RTP_CHECK((s.query_sub_blocks & (s.query_sub_blocks - 1)) == 0 && s.query_sub_blocks <= s.block_size, "'", origin,
            "': \"query_sub_blocks\" must be a power of two <= block_size (", s.block_size, "), found ",
            s.query_sub_blocks);
  if (auto it = j.find("top_p"); it != j.end()) {
    RTP_CHECK(it->is_number() && it->get<double>() > 0 && it->get<double>() <= 1, "'", origin,
              "': \"top_p\" must be a number in (0, 1], found ", it->dump());
    s.top_p = it->get<double>();
  }
  // Files written before the aggregate existed have no key: "mean", what they were made with.
  if (auto it = j.find("sub_block_aggregate"); it != j.end()) {
    RTP_CHECK(it->is_string() && (it->get<std::string>() == "mean" || it->get<std::string>() == "max"), "'", origin,
              "': \"sub_block_aggregate\" must be \"mean\" or \"max\", found ", it->dump());
    s.sub_block_aggregate = it->get<std::string>();
  }
  if (auto it = j.find("post_rope_indexer"); it != j.end()) {
    RTP_CHECK(it->is_boolean(), "'", origin, "': \"post_rope_indexer\" must be true or false, found ", it->dump());
    s.post_rope_indexer = it->get<bool>();
  }
  return s;
}

json manifest_to_json(const RtpurboManifest& m) {
  json j = {{"format", "rtpurbo-converted-model"},
            {"format_version", kConvertedFormatVersion},
            {"head_map", head_map_to_json(m.heads)},
            {"settings", settings_to_json(m.settings)},
            {"base_model", m.base_model},
            {"weights", m.weights},
            {"heads_source", m.heads_source},
            {"indexer_source", m.indexer_source},
            {"created_by", m.created_by}};
  if (m.has_indexer) j["indexer"] = {{"file", m.indexer_file}, {"dim", m.settings.indexer_dim}};
  return j;
}

RtpurboManifest manifest_from_json(const json& j, const std::string& origin) {
  RTP_CHECK(j.is_object(), "'", origin, "': expected a JSON object, found ", j.type_name());
  auto v = j.find("format_version");
  RTP_CHECK(v != j.end() && v->is_number_integer(), "'", origin,
            "': no integer \"format_version\" (not an rtpurbo.json written by rtpurbo-export?)");
  RtpurboManifest m;
  m.format_version = static_cast<int>(v->get<int64_t>());
  RTP_CHECK(m.format_version <= kConvertedFormatVersion, "'", origin, "' has format_version ", m.format_version,
            ", but this RTPurbo reads format_version <= ", kConvertedFormatVersion,
            ": it was written by a newer RTPurbo; upgrade RTPurbo to load it");
  RTP_CHECK(m.format_version >= 1, "'", origin, "': format_version must be >= 1, found ", m.format_version);
  auto hm = j.find("head_map");
  RTP_CHECK(hm != j.end(), "'", origin, "': no \"head_map\"");
  m.heads = head_map_from_json(*hm, origin);
  if (auto s = j.find("settings"); s != j.end()) m.settings = settings_from_json(*s, origin);
  if (auto ix = j.find("indexer"); ix != j.end() && !ix->is_null()) {
    RTP_CHECK(ix->is_object(), "'", origin, "': \"indexer\" must be an object, found ", ix->type_name());
    m.has_indexer = true;
    const std::string f = get_string(*ix, "file", origin);
    if (!f.empty()) m.indexer_file = f;
    RTP_CHECK(m.indexer_file.find('/') == std::string::npos && m.indexer_file != "..", "'", origin,
              "': indexer file must be a file name inside the directory, found \"", m.indexer_file, "\"");
    const int64_t dim = get_int(*ix, "dim", m.settings.indexer_dim, 1, origin);
    RTP_CHECK(dim == m.settings.indexer_dim, "'", origin, "': indexer dim ", dim,
              " disagrees with settings.indexer_dim ", m.settings.indexer_dim);
  }
  m.base_model = get_string(j, "base_model", origin);
  m.weights = get_string(j, "weights", origin);
  m.heads_source = get_string(j, "heads_source", origin);
  m.indexer_source = get_string(j, "indexer_source", origin);
  m.created_by = get_string(j, "created_by", origin);
  return m;
}

RtpurboManifest read_manifest(const std::string& path) { return manifest_from_json(read_json_file(path), path); }

}  // namespace rtp::sparse
