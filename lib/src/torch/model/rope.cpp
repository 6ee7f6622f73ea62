#include "rtp/model/rope.h"

#include <torch/torch.h>

#include <cmath>

namespace rtp::model {

namespace {
double yarn_correction_dim(double rotations, double dim, double base, double max_pos) {
  return dim * std::log(max_pos / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
}
}  // namespace

std::pair<torch::Tensor, double> rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  auto exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / static_cast<float>(dim);
  auto pos_freqs = torch::pow(static_cast<float>(c.rope_theta), exponents);
  auto inv_freq = 1.0 / pos_freqs;
  if (c.rope_scaling.type != "yarn") return {inv_freq, 1.0};

  const RopeScaling& y = c.rope_scaling;
  double attention_factor = y.attention_factor > 0 ? y.attention_factor
                                                   : (y.factor <= 1 ? 1.0 : 0.1 * std::log(y.factor) + 1.0);
  double low = yarn_correction_dim(y.beta_fast, dim, c.rope_theta, y.original_max_position_embeddings);
  double high = yarn_correction_dim(y.beta_slow, dim, c.rope_theta, y.original_max_position_embeddings);
  if (y.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // as HF: avoids a zero-width ramp
  auto ramp = ((torch::arange(dim / 2, torch::kFloat32) - static_cast<float>(low)) / static_cast<float>(high - low))
                  .clamp(0, 1);
  auto extrapolation_factor = 1 - ramp;
  auto inv_interp = 1.0 / (static_cast<float>(y.factor) * pos_freqs);
  inv_freq = inv_interp * (1 - extrapolation_factor) + inv_freq * extrapolation_factor;
  return {inv_freq, attention_factor};
}

RopeTables rope_tables(const ModelConfig& c, int64_t first_position, int64_t length, torch::Device device) {
  auto [inv_freq, attention_factor] = rope_inverse_frequencies(c);
  return rope_tables_at(torch::arange(first_position, first_position + length,
                                      torch::TensorOptions(torch::kInt64).device(device)),
                        inv_freq.to(device), attention_factor);
}

RopeTables rope_tables_at(const torch::Tensor& positions, const torch::Tensor& inv_freq, double attention_factor) {
  auto freqs = torch::outer(positions.to(torch::kFloat32), inv_freq);  // [T, D/2]
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos() * attention_factor, emb.sin() * attention_factor};
}

torch::Tensor apply_rope(const torch::Tensor& x, const RopeTables& t) {
  const int64_t half = x.size(-1) / 2;
  auto cos = t.cos.to(x.dtype());
  auto sin = t.sin.to(x.dtype());
  auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

}  // namespace rtp::model
