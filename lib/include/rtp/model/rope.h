#pragma once
// Rotary position embedding tables as Hugging Face computes them (fp32 angles, then cast), including YaRN.
#include <torch/types.h>

#include "rtp/model/model_config.h"

namespace rtp::model {

struct RopeTables {
  torch::Tensor cos, sin;  // [T, head_dim], float32, already multiplied by the attention factor
};

// inv_freq [head_dim/2] (float32) and the attention factor applied to cos/sin.
std::pair<torch::Tensor, double> rope_inverse_frequencies(const ModelConfig& c);
RopeTables rope_tables(const ModelConfig& c, int64_t first_position, int64_t length, torch::Device device);
// x [B, H, T, D] -> x * cos + rotate_half(x) * sin, computed in x's dtype (as HF does).
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& t);

}  // namespace rtp::model
