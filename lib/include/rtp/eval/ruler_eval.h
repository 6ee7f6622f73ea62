#pragma once
// `rtpurbo-eval --task ruler`: RULER-style prompts (rtp/text/ruler.h) at exact lengths, greedy generation with the
// dense and/or sparse model, string-match scoring; results JSON, and the prompts as JSONL for other tools.
#include <string>
#include <vector>

#include "rtp/torch/run_context.h"

namespace rtp::eval {

struct RulerEvalOptions {
  std::string model_dir;        // empty: only write prompts (--dump-prompts)
  std::string tokenizer;        // tokenizer.json or its directory; default: the model's
  std::vector<std::string> tasks;  // names without the "ruler:" prefix
  std::vector<int64_t> lengths;
  int64_t samples = 4;
  std::string essay_file;       // haystack for the essay tasks
  bool dense = true, sparse = true;
  std::string out_dir = "runs/eval-ruler";
  std::string dump_prompts;     // JSONL path, or empty
  // Prompt tokens per prefill forward, dense and sparse (sparse: a multiple of the block size); <= 0: one forward.
  int64_t prefill_chunk = 4096;
  // Decode steps through CUDA graphs on a GPU (rtp/model/decode_stepper.h); false: eager, for comparison.
  bool cuda_graphs = true;
  // Continue the unfinished evaluation in out_dir (its ruler.json, written after every sample): the samples it holds
  // are kept, the rest run. Its settings (model, tokenizer, tasks, lengths, samples, seed, models, prefill chunk,
  // device type, dtype, essay) must be these; the prompts are a function of them, so the result is the uninterrupted
  // run's (timings aside).
  bool resume = false;
  // Stop after this many samples evaluated by this invocation (0: no limit), leaving ruler.json unfinished for
  // --resume: evaluations split over time-limited jobs.
  int64_t stop_after_samples = 0;
};

// "ruler:niah_single_1,ruler:vt" -> {"niah_single_1", "vt"}; unknown names are errors listing the valid ones.
std::vector<std::string> parse_ruler_tasks(const std::string& spec);

void run_ruler_eval(const RulerEvalOptions& options, const RunContext& ctx);

}  // namespace rtp::eval
