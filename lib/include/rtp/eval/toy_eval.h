#pragma once
// `rtpurbo-eval --task toy`: dense vs sparse (vs random heads) on the toy retrieval task of a converted model.
//
// For each length: the same held-out toy samples (data::ToyTask, evaluation stream) are scored teacher-forced
// (data::toy_accuracy) three ways:
//   dense         every head full causal attention
//   sparse        the converted model's head map, settings and indexer (sparse::SparseAttention)
//   random_heads  the same number of retrieval KV heads chosen at random (random_head_map, seeded), with an
//                 indexer trained for them with the same budget; the caller trains it and passes its checkpoint
//                 (the checkpoint's head map is the random map). Absent: random_heads is omitted and eval.json
//                 says so.
// Sparse statistics at each length: attention_fraction (attended / causal dense key pairs), indexer_recall (mean
// true attention mass of retrieval heads on the keys they keep), attention density per (layer, KV head), and the
// KV cache bytes of the sparse layout (retrieval KV heads keep T tokens of K and V plus T x indexer_dim index
// keys; streaming KV heads min(T, sink + window) tokens) against dense (every KV head T tokens).
//
// Outputs in out_dir: eval.json and report.html (rtp/eval/report.h). While it runs, eval.progress.json holds every
// pass done so far (a pass: the dense, sparse or random-heads model at one length, or the token-level recall), written
// after each; it is removed when eval.json is written. ToyEvalOptions::resume continues from it.
// eval.json: {"task": "toy", "model", "dtype", "samples", "seed", "lengths": [...],
//   "dense":  {"accuracy", "token_accuracy", "by_length": [{"length", "accuracy", "token_accuracy"}], "kv_bytes"},
//   "sparse": {"accuracy", "token_accuracy", "attention_fraction", "indexer_recall", "kv_bytes",
//              "kv_ratio_dense_over_sparse", "by_length": [{"length", "accuracy", "token_accuracy",
//              "attention_fraction", "indexer_recall", "kv_bytes", "dense_kv_bytes"}],
//              "density": [[per KV head] per layer] (at the longest length)},
//   "random_heads": {"accuracy", "token_accuracy", "attention_fraction", "indexer_recall", "by_length", "indexer",
//                    "head_map"}  or  "random_heads": null with "random_heads_note" saying why,
//   "head_map": ..., "settings": ...}
// Top-level accuracy / fraction / recall / kv_bytes are those at the longest length (kv) or over all lengths
// (accuracy: queries pooled; fraction and recall: pairs and queries pooled).
#include <cstdint>
#include <string>
#include <vector>

#include "rtp/sparse/head_map.h"
#include "rtp/torch/run_context.h"

namespace rtp::eval {

struct ToyEvalOptions {
  std::string model_dir;           // converted directory (or HF directory with headwise_config)
  int64_t samples = 16;            // held-out sequences per length
  std::vector<int64_t> lengths;    // empty: the task's seq_len from rtpurbo_toy_task.json (else 1024)
  std::string out_dir = "runs/eval-toy";
  std::string random_heads_indexer;  // indexer checkpoint trained on random heads; empty: omit random_heads
  int64_t batch_size = 4;          // sequences per forward
  bool measure_recall = true;      // indexer_recall needs the true attention (slower)
  double token_recall_top_p = 0.9;  // > 0: also the indexer's token-level recall at this top-p (without pooling)
  bool quiet = false;              // no progress / table on stdout / stderr
  // Continue the unfinished evaluation in out_dir (its eval.progress.json): the passes it holds are kept, the rest run.
  // Its settings (model, lengths, samples, seed, batch size, recall options, random-heads indexer, device type,
  // dtype) must be these; the samples are a function of them, so eval.json is the uninterrupted run's. Without it an
  // unfinished evaluation in out_dir is an error that says what to do.
  bool resume = false;
  // Stop after this many passes computed by this invocation (0: no limit), leaving eval.progress.json for resume.
  int64_t stop_after_passes = 0;
};

struct ToyEvalLength {
  int64_t length = 0;
  double dense_accuracy = 0, sparse_accuracy = 0, random_accuracy = -1;  // -1: not evaluated
  double attention_fraction = 0, indexer_recall = 0;
  double random_attention_fraction = -1, random_recall = -1;
  double sparse_kv_bytes = 0, dense_kv_bytes = 0;
};

struct ToyEvalResult {
  std::vector<ToyEvalLength> by_length;
  double dense_accuracy = 0, sparse_accuracy = 0, random_accuracy = -1;
  double attention_fraction = 0, indexer_recall = 0;
  double token_recall = -1;  // -1: not measured
  double sparse_kv_bytes = 0, dense_kv_bytes = 0;  // at the longest length
  std::string eval_json_path, report_path;
  bool finished = true;  // false: stopped by stop_after_passes; eval.json not written, eval.progress.json holds the passes
};

ToyEvalResult run_toy_eval(const ToyEvalOptions& options, const RunContext& ctx);

// The same number of retrieval KV heads as `like`, placed uniformly at random over all (layer, KV head) slots
// (std::mt19937_64 from `seed`, partial Fisher-Yates with floor(u * n) draws: the same map on every platform).
// Used to build the random-heads baseline (train an indexer for it, then pass it to the evaluation).
sparse::HeadMap random_head_map(const sparse::HeadMap& like, uint64_t seed);

// KV cache bytes at `length` tokens for one sequence: sparse layout and dense, `elem_bytes` per value.
struct KvBytes {
  double sparse = 0, dense = 0;
};
KvBytes kv_cache_bytes(const sparse::HeadMap& heads, int64_t head_dim, int64_t indexer_dim, int64_t sink,
                       int64_t window, int64_t length, int64_t elem_bytes);

}  // namespace rtp::eval
