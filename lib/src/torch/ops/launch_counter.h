#pragma once
// The count of finished blocks a last-block epilogue takes (gemv.h, moe_decode.h): int32 on x's device, at least n
// of them, 0 between launches.
#include <torch/torch.h>

namespace rtp::ops::detail {

inline bool is_launch_counter(const torch::Tensor& done, const torch::Tensor& x, int64_t n) {
  return done.defined() && done.device() == x.device() && done.scalar_type() == torch::kInt32 && done.numel() >= n &&
         done.is_contiguous();
}

}  // namespace rtp::ops::detail
