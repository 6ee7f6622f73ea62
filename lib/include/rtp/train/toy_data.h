#pragma once
// The bridge between TrainConfig and the toy task: the generator's parameters and the sequence length at a step.
#include <cstdint>

#include "rtp/data/toy_task.h"
#include "rtp/model/model_config.h"
#include "rtp/train/recipe.h"

namespace rtp::train {

// The toy_* fields (and vocab_size) as a ToyTaskConfig.
data::ToyTaskConfig toy_task_config(const TrainConfig& c);
// The inline toy architecture fields as a Qwen3 ModelConfig.
model::ModelConfig toy_model_config(const TrainConfig& c);

// Length curriculum: seq_len when curriculum_start_len is 0; else grows linearly from curriculum_start_len at
// step 0 to seq_len at step curriculum_steps, rounded down to a multiple of 64 (never below the start length).
// A pure function of the step, so a resumed run sees the same lengths.
int64_t seq_len_at_step(const TrainConfig& c, int64_t step);

// Stream ids for data::sample_seed: training samples and held-out evaluation samples never coincide.
constexpr uint64_t kTrainStream = 0;
constexpr uint64_t kEvalStream = 1;

}  // namespace rtp::train
