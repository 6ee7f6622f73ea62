#pragma once
// RULER-style synthetic long-context tasks (NVIDIA RULER's generators as specified in
// ../shared/research/related-systems.md section 4), written from the spec: needle-in-a-haystack variants,
// variable tracking, common and frequent words extraction. Prompts are fitted to an exact token count with the
// model's tokenizer: prompt tokens + tokens_to_generate == max_seq_length. Deterministic by (seed, index).
#include <cstdint>
#include <string>
#include <vector>

#include "rtp/text/tokenizer.h"

namespace rtp::text::ruler {

struct RulerOptions {
  int64_t max_seq_length = 4096;
  uint64_t seed = 42;
  std::string essay_text;  // essay haystack (e.g. essays as plain text); needed by the essay tasks
};

struct RulerSample {
  std::string task;
  int64_t index = 0;
  std::string prompt;                // the full model input, answer prefix included
  std::vector<int32_t> prompt_ids;   // its tokens (exactly max_seq_length - tokens_to_generate of them)
  std::vector<std::string> answers;  // references
  int64_t tokens_to_generate = 0;
  std::string metric;                // "string_match_all" or "string_match_part"
};

// niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe.
const std::vector<std::string>& task_names();
bool task_needs_essay(const std::string& task);

// Throws rtp::Error naming the task and listing the valid ones, or saying why the length cannot be met.
RulerSample generate_sample(const std::string& task, const Tokenizer& tokenizer, const RulerOptions& options,
                            int64_t index);
// The checks generate_sample makes before fitting a prompt, alone and cheap (the task's smallest prompt only): an
// unknown task, a missing essay, a length below the task's smallest prompt plus its answer. Lets a caller refuse a
// (task, length) before any other work rather than when its turn comes.
void require_fits(const std::string& task, const Tokenizer& tokenizer, const RulerOptions& options);

// Mean over references of a case-insensitive substring match (NIAH, vt, cwe, fwe).
double string_match_all(const std::string& prediction, const std::vector<std::string>& references);
// Max over references (QA).
double string_match_part(const std::string& prediction, const std::vector<std::string>& references);
double score(const RulerSample& sample, const std::string& prediction);

}  // namespace rtp::text::ruler
