#pragma once
// Every parameter a config implies, by Hugging Face name and shape, in checkpoint order. Construction,
// loading (shape checks) and saving all walk this one list.
#include <string>
#include <vector>

#include "rtp/model/model_config.h"

namespace rtp::model {

struct ParameterSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool is_norm = false;
  bool is_bias = false;
  // MoE experts are held fused, as transformers >= 5 does in memory ([E, 2I, H] gate_up, [E, H, I] down);
  // checkpoints may hold them per expert (mlp.experts.{e}.{gate,up,down}_proj.weight).
  bool is_fused_experts = false;
};

std::vector<ParameterSpec> parameter_layout(const ModelConfig& c);

// Human-readable reason for a shape ("hidden_size=64, vocab_size=128"), used in load errors.
std::string shape_reason(const ModelConfig& c, const ParameterSpec& spec);

}  // namespace rtp::model
