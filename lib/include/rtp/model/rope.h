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
// The same tables for int64 `positions` [T], with inv_freq (float32, on the positions' device) and the attention
// factor from rope_inverse_frequencies: no host value is read or copied, so a CUDA graph can capture it with the
// positions in a device buffer that changes between replays (the one-token decode step).
RopeTables rope_tables_at(const torch::Tensor& positions, const torch::Tensor& inv_freq, double attention_factor);
// x [B, H, T, D] -> x * cos + rotate_half(x) * sin, computed in x's dtype (as HF does).
torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& t);

}  // namespace rtp::model
