#pragma once
// Training checkpoints: everything needed to continue a run exactly.
//   <out_dir>/checkpoints/step-00000300/
//       model.safetensors      parameters under their Hugging Face names, in the training dtype (exact)
//       optimizer.safetensors  AdamW moments: "<param>.exp_avg", "<param>.exp_avg_sq"
//       state.json             {"format": "rtpurbo-train-checkpoint", "version": 1, "step", "data_cursor",
//                               "seed", "adam_steps": {param: n}, "config": {field: text}, "config_yaml",
//                               "run_state" (optional)}
//   <out_dir>/checkpoints/latest   "step-00000300"
// A checkpoint directory is written under a temporary name and renamed into place, and `latest` is replaced
// atomically after that, so a crash leaves the previous checkpoint intact and `latest` pointing at a whole one.
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rtp/train/recipe.h"

namespace rtp::train {

constexpr const char* kCheckpointFormat = "rtpurbo-train-checkpoint";
constexpr int kCheckpointVersion = 1;

struct CheckpointState {
  int64_t step = 0;         // optimizer steps completed
  int64_t data_cursor = 0;  // training samples consumed (index into the training stream)
  uint64_t seed = 0;
  TrainConfig config;       // the config of the run that wrote it
  // What the stage trained beyond the config (the indexer stage: its retrieval heads, which the config names only by
  // heads_file). null when none; written as "run_state" in state.json.
  nlohmann::json run_state;
};

using NamedParams = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes <out_dir>/checkpoints/step-<step>/ and updates `latest`; keeps the newest `keep` checkpoints.
// Returns the checkpoint directory.
std::string save_checkpoint(const std::string& out_dir, const NamedParams& params, torch::optim::AdamW& optimizer,
                            const CheckpointState& state, int64_t keep);

// The directory `latest` points to, if any.
std::optional<std::string> latest_checkpoint(const std::string& out_dir);

// The "run_state" of the checkpoint in `dir` (null if it has none), read before its tensors are: a stage checks it
// first, so that a mismatch is named as what it is rather than as a missing or mis-shaped parameter.
nlohmann::json checkpoint_run_state(const std::string& dir);

// Copies parameters (same names and shapes required) and AdamW state from `dir` into `params`/`optimizer`;
// returns the state. Errors name the checkpoint and what is missing or mismatched.
CheckpointState load_checkpoint(const std::string& dir, const NamedParams& params, torch::optim::AdamW& optimizer);

// rm -r (nothing if absent); throws naming the path on failure.
void remove_directory_tree(const std::string& path);

// Fields that may differ between the run that wrote a checkpoint and the run that resumes it (logging, where
// to stop, where to write, device-like settings, and steps): anything else differing would not continue the same
// run and is an error.
const std::vector<std::string>& resume_tolerant_fields();

// --resume: throws naming every differing non-tolerant field with both values (`dir`: the checkpoint, for the
// message). A changed `steps` is allowed (extending a run) and reported on stderr.
void check_resume_config(const std::string& dir, const TrainConfig& stored, const TrainConfig& now);

// A run without --resume starts at step 0. Checkpoints already in out_dir would be left beside the new ones (an
// old `latest` that a later --resume would load) or, for a run that did not finish, lost from sight: an error that
// says what to do. Exception: when `final_artifact` (the file a finished run writes last) is newer than the
// checkpoints, out_dir holds a finished run, which a rerun replaces: its checkpoints are removed first (a note
// says so), so that rerunning the same command keeps working.
void check_fresh_start(const std::string& out_dir, const std::string& final_artifact);

// The run's log.jsonl at the start of a run: emptied at step 0; on resume from step `step`, cut back to the lines
// of steps <= `step` (a run stopped by a signal logged steps after its last checkpoint, which the resumed run
// logs again), so that each step appears once. A torn last line is dropped. Nothing else in the file changes.
void start_step_log(const std::string& log_path, int64_t step);

}  // namespace rtp::train
