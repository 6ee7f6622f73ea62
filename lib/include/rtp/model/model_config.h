#pragma once
// The architecture hyper-parameters of a Qwen3 / Qwen3-MoE checkpoint, read from its config.json.
// Both spellings are accepted: older (rope_theta, rope_scaling, num_experts) and newer
// (rope_parameters, num_local_experts).
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace rtp::model {

struct RopeScaling {
  std::string type = "default";  // "default" or "yarn"
  double factor = 1.0;
  double original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0;  // 0: derived from factor (0.1 ln(factor) + 1)
  bool truncate = true;
};

struct ModelConfig {
  std::string model_type = "qwen3";  // "qwen3" or "qwen3_moe"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::string torch_dtype = "float32";
  // Mixture of experts (qwen3_moe).
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t decoder_sparse_step = 1;
  bool norm_topk_prob = false;
  std::vector<int64_t> mlp_only_layers;

  bool is_moe() const { return num_experts > 0; }
  // Whether layer `i` uses the sparse MoE block (HF rule: not in mlp_only_layers, num_experts > 0 and
  // (i + 1) % decoder_sparse_step == 0).
  bool layer_is_moe(int64_t layer) const;
  int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
};

// Parses and validates; `origin` names the file in error messages.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& origin);
ModelConfig load_model_config(const std::string& config_json_path);
nlohmann::json model_config_to_json(const ModelConfig& c);

// Throws unless a sequence of `tokens` positions fits the model (tokens <= max_position_embeddings; a config
// without the field, 0, accepts any): "<what> <tokens> exceeds the model's max_position_embeddings <n>". Checked
// before work whose length is known, so that a too-long run fails at once instead of after minutes.
void check_fits_positions(const ModelConfig& c, int64_t tokens, const std::string& what);

// The tokens that end generation for the checkpoint in `dir`, as transformers' generate() takes them:
// generation_config.json's eos_token_id (a number or a list), else config.json's; empty when neither names one.
std::vector<int64_t> load_stop_token_ids(const std::string& dir);

}  // namespace rtp::model
