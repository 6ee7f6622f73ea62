#pragma once
// Calibration sequences for head identification and the pass that scores a frozen model on them.
// Layout of each sequence (length T): [prefix noise | span S (length L) | filler | S again], the second copy
// ending the sequence. The prefix length is drawn per sequence from [1, max(1, (T - 2L) / 8)], so the first
// copy is early and the copies are far apart.
//   toy   position 0 is the toy task's BOS; every other token is uniform in [kNumSpecial, vocab) (the toy
//         task's non-special ids; [0, vocab) if the vocabulary is too small) -- random tokens make copying the
//         only way to predict the second copy.
//   text  a window of the token stream at a random offset (cyclic if the text is shorter than T); S is the
//         stream's tokens at the first copy's place, written again at the end.
// Randomness: std::mt19937_64 seeded from (seed, sequence index) by SplitMix64, floor(u * n) integers: the same
// sequences on every platform.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "rtp/heads/head_scores.h"
#include "rtp/model/qwen3.h"

namespace rtp::heads {

struct CalibrationSequence {
  std::vector<int64_t> ids;  // exactly seq_len tokens
  SpanLayout layout;
};

struct CalibrationSpec {
  std::string source = "toy";  // "toy" or "text"
  int64_t vocab_size = 0;      // toy
  std::vector<int32_t> text_tokens;  // text: the token stream (non-empty)
  int64_t num_sequences = 8;
  int64_t seq_len = 512;
  int64_t span_len = 32;
  uint64_t seed = 1234;
};

// Throws naming the field when the layout cannot fit (2 L + 2 > T, ...).
std::vector<CalibrationSequence> make_calibration_sequences(const CalibrationSpec& spec);

// A short English paragraph for --calibration text without --text.
const std::string& builtin_calibration_text();

// Runs the model (no grad) on the sequences, `batch_size` at a time, and accumulates scores over every layer.
// progress(done, total) is called after each batch.
HeadScores score_model_heads(model::Qwen3Model& model, const std::vector<CalibrationSequence>& sequences,
                             const ScoreOptions& options, int64_t batch_size = 1,
                             const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace rtp::heads
