#pragma once
// The custom kernels have no backward. Where autograd records a graph through any of an op's inputs (a forward that
// trains: the pretraining stage, a fine-tune), the op takes its eager ops, whose gradients autograd knows.
#include <torch/torch.h>

namespace rtp::ops::detail {

template <typename... Tensors>
bool backward_needed(const Tensors&... inputs) {
  return torch::GradMode::is_enabled() && (... || (inputs.defined() && inputs.requires_grad()));
}

}  // namespace rtp::ops::detail
