#include "rtp/model/parameter_layout.h"

#include "rtp/core/error.h"

namespace rtp::model {

std::vector<ParameterSpec> parameter_layout(const ModelConfig& c) {
  std::vector<ParameterSpec> out;
  const int64_t H = c.hidden_size, D = c.head_dim, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool norm = false, bool bias = false,
                 bool fused = false) { out.push_back({std::move(name), std::move(shape), norm, bias, fused}); };
  add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    add(pre + "input_layernorm.weight", {H}, true);
    add(pre + "self_attn.q_proj.weight", {Hq * D, H});
    add(pre + "self_attn.k_proj.weight", {Hkv * D, H});
    add(pre + "self_attn.v_proj.weight", {Hkv * D, H});
    if (c.attention_bias) {
      add(pre + "self_attn.q_proj.bias", {Hq * D}, false, true);
      add(pre + "self_attn.k_proj.bias", {Hkv * D}, false, true);
      add(pre + "self_attn.v_proj.bias", {Hkv * D}, false, true);
    }
    add(pre + "self_attn.o_proj.weight", {H, Hq * D});
    if (c.attention_bias) add(pre + "self_attn.o_proj.bias", {H}, false, true);
    add(pre + "self_attn.q_norm.weight", {D}, true);
    add(pre + "self_attn.k_norm.weight", {D}, true);
    add(pre + "post_attention_layernorm.weight", {H}, true);
    if (c.layer_is_moe(i)) {
      add(pre + "mlp.gate.weight", {c.num_experts, H});
      add(pre + "mlp.experts.gate_up_proj", {c.num_experts, 2 * c.moe_intermediate_size, H}, false, false, true);
      add(pre + "mlp.experts.down_proj", {c.num_experts, H, c.moe_intermediate_size}, false, false, true);
    } else {
      add(pre + "mlp.gate_proj.weight", {c.intermediate_size, H});
      add(pre + "mlp.up_proj.weight", {c.intermediate_size, H});
      add(pre + "mlp.down_proj.weight", {H, c.intermediate_size});
    }
  }
  add("model.norm.weight", {H}, true);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H});
  return out;
}

std::string shape_reason(const ModelConfig& c, const ParameterSpec& s) {
  const std::string& n = s.name;
  auto has = [&](const char* part) { return n.find(part) != std::string::npos; };
  if (has("embed_tokens") || has("lm_head"))
    return str_cat("from config.json vocab_size=", c.vocab_size, ", hidden_size=", c.hidden_size);
  if (has("q_norm") || has("k_norm")) return str_cat("from config.json head_dim=", c.head_dim);
  if (has("layernorm") || n == "model.norm.weight") return str_cat("from config.json hidden_size=", c.hidden_size);
  if (has("self_attn"))
    return str_cat("from config.json hidden_size=", c.hidden_size, ", num_attention_heads=", c.num_attention_heads,
                   ", num_key_value_heads=", c.num_key_value_heads, ", head_dim=", c.head_dim);
  if (has("experts") || has("mlp.gate."))
    return str_cat("from config.json num_experts=", c.num_experts, ", moe_intermediate_size=", c.moe_intermediate_size,
                   ", hidden_size=", c.hidden_size);
  return str_cat("from config.json hidden_size=", c.hidden_size, ", intermediate_size=", c.intermediate_size);
}

}  // namespace rtp::model
