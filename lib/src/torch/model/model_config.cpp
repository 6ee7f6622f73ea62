#include "rtp/model/model_config.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

namespace rtp::model {

using nlohmann::json;

bool ModelConfig::layer_is_moe(int64_t layer) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

namespace {

template <typename T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

int64_t require_positive(const json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  RTP_CHECK(it != j.end() && !it->is_null(), "'", origin, "': config key '", key,
            "' is missing (expected a positive integer)");
  RTP_CHECK(it->is_number_integer() && it->get<int64_t>() > 0, "'", origin, "': config key '", key,
            "' must be a positive integer, found ", it->dump());
  return it->get<int64_t>();
}

void parse_rope(const json& j, ModelConfig& c, const std::string& origin) {
  // Newer spelling: rope_parameters {rope_type, rope_theta, factor, ...}; older: rope_theta + rope_scaling.
  json params = json::object();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) params = j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) params = j["rope_scaling"];
  c.rope_theta = get_or<double>(params, "rope_theta", get_or<double>(j, "rope_theta", 10000.0));
  std::string type = get_or<std::string>(params, "rope_type", get_or<std::string>(params, "type", "default"));
  RTP_CHECK(type == "default" || type == "yarn", "'", origin, "': rope type '", type,
            "' is not supported (expected 'default' or 'yarn')");
  c.rope_scaling.type = type;
  if (type == "yarn") {
    c.rope_scaling.original_max_position_embeddings = get_or<double>(
        params, "original_max_position_embeddings",
        get_or<double>(j, "original_max_position_embeddings", static_cast<double>(c.max_position_embeddings)));
    if (params.contains("factor") && !params["factor"].is_null()) {
      c.rope_scaling.factor = params["factor"].get<double>();
    } else {
      c.rope_scaling.factor = static_cast<double>(c.max_position_embeddings) / c.rope_scaling.original_max_position_embeddings;
    }
    c.rope_scaling.beta_fast = get_or<double>(params, "beta_fast", 32.0);
    c.rope_scaling.beta_slow = get_or<double>(params, "beta_slow", 1.0);
    c.rope_scaling.attention_factor = get_or<double>(params, "attention_factor", 0.0);
    c.rope_scaling.truncate = get_or<bool>(params, "truncate", true);
    RTP_CHECK(!params.contains("mscale") || params["mscale"].is_null(), "'", origin,
              "': yarn 'mscale' is not supported (Qwen3 configs do not use it)");
  }
  RTP_CHECK(c.rope_theta > 0, "'", origin, "': rope_theta must be positive, found ", c.rope_theta);
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& origin) {
  RTP_CHECK(j.is_object(), "'", origin, "': expected a JSON object");
  ModelConfig c;
  c.model_type = get_or<std::string>(j, "model_type", "qwen3");
  RTP_CHECK(c.model_type == "qwen3" || c.model_type == "qwen3_moe", "'", origin, "': model_type '", c.model_type,
            "' is not supported (expected 'qwen3' or 'qwen3_moe')");
  c.vocab_size = require_positive(j, "vocab_size", origin);
  c.hidden_size = require_positive(j, "hidden_size", origin);
  c.num_hidden_layers = require_positive(j, "num_hidden_layers", origin);
  c.num_attention_heads = require_positive(j, "num_attention_heads", origin);
  c.num_key_value_heads = get_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads);
  c.head_dim = get_or<int64_t>(j, "head_dim", c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = get_or<int64_t>(j, "max_position_embeddings", 32768);
  c.rms_norm_eps = get_or<double>(j, "rms_norm_eps", 1e-6);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false);
  c.attention_bias = get_or<bool>(j, "attention_bias", false);
  c.torch_dtype = get_or<std::string>(j, "dtype", get_or<std::string>(j, "torch_dtype", "float32"));
  RTP_CHECK(!get_or<bool>(j, "use_sliding_window", false), "'", origin,
            "': use_sliding_window=true is not supported (Qwen3 checkpoints ship it false)");
  const std::string act = get_or<std::string>(j, "hidden_act", "silu");
  RTP_CHECK(act == "silu", "'", origin, "': hidden_act '", act, "' is not supported (expected 'silu')");
  parse_rope(j, c, origin);

  if (c.model_type == "qwen3_moe") {
    c.num_experts = get_or<int64_t>(j, "num_local_experts", get_or<int64_t>(j, "num_experts", 0));
    RTP_CHECK(c.num_experts > 0, "'", origin, "': qwen3_moe needs num_experts (or num_local_experts) > 0");
    c.num_experts_per_tok = require_positive(j, "num_experts_per_tok", origin);
    c.moe_intermediate_size = require_positive(j, "moe_intermediate_size", origin);
    c.decoder_sparse_step = get_or<int64_t>(j, "decoder_sparse_step", 1);
    c.norm_topk_prob = get_or<bool>(j, "norm_topk_prob", false);
    c.mlp_only_layers = get_or<std::vector<int64_t>>(j, "mlp_only_layers", {});
    RTP_CHECK(c.num_experts_per_tok <= c.num_experts, "'", origin, "': num_experts_per_tok=", c.num_experts_per_tok,
              " exceeds num_experts=", c.num_experts);
    RTP_CHECK(c.decoder_sparse_step > 0, "'", origin, "': decoder_sparse_step must be positive");
  }
  bool needs_dense_mlp = !c.is_moe();
  for (int64_t i = 0; i < c.num_hidden_layers && !needs_dense_mlp; ++i) needs_dense_mlp = !c.layer_is_moe(i);
  if (needs_dense_mlp) c.intermediate_size = require_positive(j, "intermediate_size", origin);
  else c.intermediate_size = get_or<int64_t>(j, "intermediate_size", 0);

  RTP_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "'", origin, "': num_attention_heads=",
            c.num_attention_heads, " is not a multiple of num_key_value_heads=", c.num_key_value_heads);
  RTP_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "'", origin, "': head_dim must be a positive even number, found ",
            c.head_dim);
  return c;
}

ModelConfig load_model_config(const std::string& path) { return parse_model_config(read_json_file(path), path); }

json model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({c.is_moe() ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == "yarn") {
    json r;
    r["rope_type"] = "yarn";
    r["factor"] = c.rope_scaling.factor;
    r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    r["beta_fast"] = c.rope_scaling.beta_fast;
    r["beta_slow"] = c.rope_scaling.beta_slow;
    if (c.rope_scaling.attention_factor > 0) r["attention_factor"] = c.rope_scaling.attention_factor;
    j["rope_scaling"] = r;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["hidden_act"] = "silu";
  j["use_sliding_window"] = false;
  j["torch_dtype"] = c.torch_dtype;
  if (c.is_moe()) {
    j["num_experts"] = c.num_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
    j["moe_intermediate_size"] = c.moe_intermediate_size;
    j["decoder_sparse_step"] = c.decoder_sparse_step;
    j["norm_topk_prob"] = c.norm_topk_prob;
    j["mlp_only_layers"] = c.mlp_only_layers;
  }
  return j;
}

void check_fits_positions(const ModelConfig& c, int64_t tokens, const std::string& what) {
  RTP_CHECK(c.max_position_embeddings <= 0 || tokens <= c.max_position_embeddings, what, " ", tokens,
            " exceeds the model's max_position_embeddings ", c.max_position_embeddings);
}

std::vector<int64_t> load_stop_token_ids(const std::string& dir) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    const std::string path = dir + "/" + name;
    if (!file_exists(path)) continue;
    const json j = read_json_file(path);
    auto it = j.find("eos_token_id");
    if (it == j.end() || it->is_null()) continue;
    std::vector<int64_t> ids;
    if (it->is_number_integer()) {
      ids.push_back(it->get<int64_t>());
    } else {
      RTP_CHECK(it->is_array(), "'", path, "': eos_token_id must be a token id or a list of them, found ", it->dump());
      for (const auto& v : *it) {
        RTP_CHECK(v.is_number_integer(), "'", path, "': eos_token_id must be a token id or a list of them, found ", it->dump());
        ids.push_back(v.get<int64_t>());
      }
    }
    return ids;
  }
  return {};
}

}  // namespace rtp::model
