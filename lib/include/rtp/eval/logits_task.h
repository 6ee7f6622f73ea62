#pragma once
// `rtpurbo-eval --task logits`: int64 input_ids [B, T] in, float32 logits [B, T, V] out, both safetensors.
#include <string>

#include "rtp/torch/run_context.h"

namespace rtp::eval {

struct LogitsTaskOptions {
  std::string model_dir;
  std::string input_path;   // safetensors holding "input_ids"
  std::string output_path;  // safetensors receiving "logits" (written atomically)
  int64_t batch_chunk = 8;  // sequences per forward, to bound memory
};

void run_logits_task(const LogitsTaskOptions& options, const RunContext& ctx);

}  // namespace rtp::eval
