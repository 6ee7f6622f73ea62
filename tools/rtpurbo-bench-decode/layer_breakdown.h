#pragma once
// Where a one-token decode step's time goes: each op of one decoder layer (and the LM head) timed alone, as the
// decode step runs it (one token, the model's weights and shapes, the KV cache at a given length), against the bytes
// it must move. An op is captured `reps` times into one CUDA graph and the graph replayed, so the time per op is what
// it costs between its neighbours in the step's graphs: launch and tail latency included, host overhead not. Calls
// cycle through copies of their weights and KV (and MoE calls through random experts), so that no call finds its
// operands in L2 from the call before, as in a step, where each layer's are read once.
#include <torch/types.h>

#include <string>
#include <vector>

#include "rtp/model/qwen3.h"
#include "rtp/sparse/sparse_settings.h"

namespace rtp::bench {

struct OpTiming {
  std::string group;  // "attention", "dense MLP", "MoE", "head"
  std::string op;
  double us = 0;      // per call
  int64_t bytes = 0;  // read + written at least once
};

// The ops of layer 0 (its MLP kind: dense or MoE) and the head, with the dense attention over `kv_len` cached tokens
// and the sparse decode of a layer with one retrieval KV head (the others streaming, `settings` window and top-p).
// CUDA only.
std::vector<OpTiming> time_layer_ops(const model::Qwen3Model& model, int64_t kv_len,
                                     const sparse::SparseSettings& settings, int reps = 50);

}  // namespace rtp::bench
