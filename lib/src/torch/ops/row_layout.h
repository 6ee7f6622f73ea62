#pragma once
// Internal to the torch-facing ops: whether a tensor is a stack of rows a kernel can walk with one stride.
#include <torch/types.h>

#include <optional>

namespace rtp::ops::detail {

// The distance between consecutive rows when t is rows of its last dimension with unit element stride, the leading
// dimensions collapsing into one evenly spaced row index; nothing otherwise.
inline std::optional<int64_t> row_stride(const torch::Tensor& t) {
  if (t.dim() == 0 || t.stride(-1) != 1) return std::nullopt;
  if (t.dim() == 1) return t.size(0);
  const int64_t s = t.stride(-2);
  if (s < t.size(-1)) return std::nullopt;
  int64_t expected = s;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return std::nullopt;
    expected *= t.size(d);
  }
  return s;
}

}  // namespace rtp::ops::detail
