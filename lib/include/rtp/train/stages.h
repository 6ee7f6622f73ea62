#pragma once
// rtpurbo-train's stages and how they plug in. run_stage() dispatches on TrainConfig::stage:
//   "pretrain" -> run_pretrain_stage (this library: a fresh toy Qwen3 on the toy task)
//   "indexer"  -> run_indexer_stage  (stage 1 of the method; defined by the indexer trainer)
// A new stage is: a value in the `stage` field's one_of(...) in recipe.h, a function with the signature below,
// and one line in run_stage(). Stages read only TrainConfig and RunContext (no globals).
#include <string>
#include <vector>

#include "rtp/torch/run_context.h"
#include "rtp/train/recipe.h"

namespace rtp::train {

struct TrainResult {
  int64_t first_step = 0;        // the step this invocation started at (> 0 when resumed)
  std::vector<double> losses;    // training loss of each step this invocation ran (step first_step + i)
  int64_t steps_done = 0;        // steps completed in total (including those before a resume)
  double final_accuracy = -1;    // toy exact-match accuracy at the end (-1: not evaluated)
  std::string model_dir;         // where the final Hugging Face checkpoint went ("" if the run stopped early)
};

// seed, device (cfg.device, "auto" resolved) and dtype from the config.
RunContext make_run_context(const TrainConfig& cfg);

TrainResult run_stage(const TrainConfig& cfg, RunContext& ctx);
TrainResult run_pretrain_stage(const TrainConfig& cfg, RunContext& ctx);
// Stage 1 (indexer). Declared here, defined by the indexer trainer (lib/src/torch/train/indexer_stage*.cpp).
void run_indexer_stage(const TrainConfig& cfg, RunContext& ctx);

}  // namespace rtp::train
