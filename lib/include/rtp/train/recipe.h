#pragma once
// TrainConfig: everything rtpurbo-train reads, for every stage. A recipe (YAML) sets any subset of the fields by
// their names; command-line flags (`--seq_len 512` or `--seq-len 512`) override the recipe; `--dump-config`
// prints the merged result, which loads back to the same config.
//
// Adding a field is one line in RTP_TRAIN_CONFIG_FIELDS below: (group, C++ type, name, default, check, help).
// The struct member, the recipe key, the CLI flag, --help, --dump-config and validation all come from it.
#include <string>
#include <utility>
#include <vector>

#include "rtp/core/config_registry.h"

namespace rtp::train {

using rtp::config::above;
using rtp::config::any;
using rtp::config::at_least;
using rtp::config::one_of;
using rtp::config::range;

// clang-format off
#define RTP_TRAIN_CONFIG_FIELDS(X)                                                                                   \
  /* run */                                                                                                          \
  X("run", std::string, stage, "pretrain", one_of({"pretrain", "indexer"}),                                          \
    "pretrain: train a fresh toy Qwen3 on the toy task; indexer: stage 1, train the indexer of a frozen model")      \
  X("run", int64_t, seed, 1234, at_least(0), "seeds model init, data order and everything random in the run")        \
  X("run", std::string, device, "auto", any(), "cpu, cuda, cuda:N or auto (CUDA when available)")                   \
  X("run", std::string, dtype, "float32", one_of({"float32", "bfloat16", "float16"}),                               \
    "parameter/compute dtype of the trained weights (float32 recommended: AdamW state follows it)")                 \
  X("run", std::string, autocast, "none", one_of({"none", "bfloat16"}),                                              \
    "pretrain: run forward and loss under bf16 autocast (fp32 weights and AdamW state; flash attention on GPU)")    \
  X("run", std::string, sdpa_backend, "auto", one_of({"auto", "math", "flash", "efficient", "cudnn"}),              \
    "pretrain on CUDA: the only scaled-dot-product-attention backend allowed (auto: PyTorch chooses)")              \
  X("run", std::string, out_dir, "runs/train", any(), "where checkpoints, log.jsonl and the final model go")         \
  X("run", bool, resume, false, any(), "continue from the latest checkpoint in out_dir (same data order and losses)")\
  X("run", int64_t, stop_at_step, 0, at_least(0),                                                                  \
    "0: run to steps; else checkpoint and stop once this step is reached (time-limited jobs; --resume continues)")   \
  X("run", int64_t, log_every, 10, at_least(1), "progress line to stderr every N steps")                            \
  X("run", int64_t, save_every, 500, at_least(0), "checkpoint every N steps (0: only at the last step or stop_at_step)")\
  X("run", int64_t, eval_every, 250, at_least(0), "toy exact-match accuracy every N steps (0: only at the end)")     \
  X("run", int64_t, eval_samples, 64, at_least(1), "held-out toy sequences per evaluation")                         \
  X("run", int64_t, keep_checkpoints, 2, at_least(1), "how many of the newest checkpoints to keep")                  \
  X("run", int64_t, dist_timeout_s, 300, at_least(1),                                                              \
    "distributed runs: a rendezvous or collective that waits longer than this ends the job, naming the rank")      \
  X("run", std::string, save_dtype, "bfloat16", one_of({"float32", "bfloat16", "float16"}),                         \
    "dtype of the final Hugging Face checkpoint (out_dir/model)")                                                    \
  /* model */                                                                                                        \
  X("model", std::string, model_dir, "", any(),                                                                      \
    "Hugging Face checkpoint dir; empty (pretrain only): a fresh model from the architecture fields below")          \
  X("model", std::string, model_init, "load", one_of({"load", "random"}),                                            \
    "load: the weights in model_dir; random: only model_dir/config.json, weights drawn from normal(0, init_std) "   \
    "on the device (speed and memory runs of a full-size model whose weights are not at hand)")                     \
  X("model", int64_t, vocab_size, 512, range(16, 1 << 22), "toy architecture: vocabulary size")                      \
  X("model", int64_t, hidden_size, 256, range(8, 1 << 16), "toy architecture: model width")                          \
  X("model", int64_t, intermediate_size, 768, range(8, 1 << 18), "toy architecture: MLP width")                      \
  X("model", int64_t, num_hidden_layers, 4, range(1, 512), "toy architecture: layers")                               \
  X("model", int64_t, num_attention_heads, 8, range(1, 1024), "toy architecture: query heads")                       \
  X("model", int64_t, num_key_value_heads, 4, range(1, 1024), "toy architecture: KV heads (GQA)")                    \
  X("model", int64_t, head_dim, 64, range(2, 1024), "toy architecture: head dimension (even, for RoPE)")            \
  X("model", double, rope_theta, 10000.0, above(0), "toy architecture: RoPE base")                                   \
  X("model", int64_t, max_position_embeddings, 32768, at_least(1), "toy architecture: written to config.json")       \
  X("model", bool, tie_word_embeddings, false, any(), "toy architecture: share embedding and LM head")               \
  X("model", double, init_std, 0.02, above(0), "toy architecture: std of the random initial weights")                \
  /* data */                                                                                                         \
  X("data", std::string, data, "toy", one_of({"toy", "files"}),                                                      \
    "toy: the synthetic long-context task (rtp/data/toy_task.h); files: data_files (stage indexer)")                 \
  X("data", std::string, data_files, "", any(),                                                                      \
    "comma-separated .txt (one document each) or .jsonl (one {\"text\": ...} document per line) files, tokenized "   \
    "with model_dir/tokenizer.json, packed and cut into seq_len sequences (rtp/text/text_corpus.h)")                  \
  X("data", std::string, data_separator, "auto", any(),                                                              \
    "data: files: the token after each document: auto (<|endoftext|> if the tokenizer has it), \"\" (none) or one "  \
    "token")                                                                                                           \
  X("data", int64_t, seq_len, 1024, range(8, 1 << 24), "tokens per training sequence")                              \
  X("data", int64_t, batch_size, 8, range(1, 1 << 20), "sequences per optimizer step")                              \
  X("data", int64_t, curriculum_start_len, 0, at_least(0),                                                          \
    "0: off; else train at this length first, growing linearly to seq_len over curriculum_steps")                   \
  X("data", int64_t, curriculum_steps, 0, at_least(0), "steps over which the curriculum reaches seq_len")           \
  X("data", int64_t, toy_world_seed, 7, at_least(0), "seeds the haystack's Markov chain (shared by all sequences)")  \
  X("data", int64_t, toy_num_filler, 248, at_least(2), "toy task: filler token ids")                                 \
  X("data", int64_t, toy_num_keys, 128, at_least(2), "toy task: key token ids")                                      \
  X("data", int64_t, toy_num_values, 128, at_least(2), "toy task: value token ids")                                  \
  X("data", int64_t, toy_key_len, 2, range(1, 16), "toy task: tokens per needle key")                                \
  X("data", int64_t, toy_value_len, 3, range(1, 16), "toy task: tokens per needle value")                            \
  X("data", int64_t, toy_needles, 16, range(1, 4096), "toy task: KEY..VAL.. needles per sequence")                  \
  X("data", int64_t, toy_queries, 8, range(1, 4096), "toy task: QUERY..ANS.. queries at the end of a sequence")     \
  X("data", int64_t, toy_spans, 2, range(0, 4096), "toy task: spans copied verbatim later (induction)")             \
  X("data", int64_t, toy_span_len, 32, range(2, 1 << 20), "toy task: tokens per copied span")                       \
  X("data", int64_t, toy_markov_branching, 4, range(0, 1 << 16), "toy task: successors per filler token (0: uniform)")\
  X("data", int64_t, toy_markov_lag, 1, range(1, 64), "toy task: filler token i follows the chain from token i-lag")\
  X("data", bool, toy_random_spans, false, any(), "toy task: spans of random tokens (induction-only) not haystack")\
  X("data", bool, toy_adjacent, false, any(), "toy task: value right after its key (KEY VAL k v): one induction step")\
  X("data", double, answer_loss_weight, 5.0, range(0, 1e6), "loss weight of answer tokens (others weigh 1)")        \
  /* optimizer */                                                                                                    \
  X("optim", int64_t, steps, 1000, at_least(0), "optimizer steps")                                                   \
  X("optim", double, lr, 1e-3, range(0, 10, "(]"), "peak learning rate")                                             \
  X("optim", int64_t, warmup_steps, 100, at_least(0), "linear warm-up steps from 0 to lr")                           \
  X("optim", double, min_lr_ratio, 0.1, range(0, 1), "cosine decays to lr * min_lr_ratio at the last step")         \
  X("optim", double, weight_decay, 0.1, range(0, 10), "AdamW decoupled weight decay (matrices only, not norms)")    \
  X("optim", double, beta1, 0.9, range(0, 1, "[)"), "AdamW beta1")                                                   \
  X("optim", double, beta2, 0.95, range(0, 1, "[)"), "AdamW beta2")                                                  \
  X("optim", double, adam_eps, 1e-8, above(0), "AdamW epsilon")                                                      \
  X("optim", int64_t, micro_batch, 0, at_least(0),                                                                \
    "indexer stage: sequences per forward pass (0: a rank's whole batch at once); gradients accumulate over "      \
    "micro-batches, so only one micro-batch's activations are alive (full-size models at long lengths)")            \
  X("optim", double, grad_clip, 1.0, at_least(0), "clip the global gradient norm to this (0: off)")                 \
  /* indexer stage (stage 1), read by run_indexer_stage */                                                           \
  X("indexer", int64_t, indexer_dim, 16, range(1, 4096),                                                            \
    "indexer projection width (16: the block selection, CPU reference and CUDA kernels, is built for 16)")          \
  X("indexer", std::string, indexer_position, "pre_rope", one_of({"pre_rope", "post_rope"}),                         \
    "apply the indexer to q/k before RoPE (paper) or after")                                                         \
  X("indexer", double, top_p, 0.9, range(0, 1, "(]"), "top-p mass the selection keeps")                              \
  X("indexer", int64_t, sink, 4, at_least(0), "streaming heads: first tokens always attended")                      \
  X("indexer", int64_t, window, 8192, at_least(1), "streaming heads: sliding window")                               \
  X("indexer", int64_t, block_size, 64, one_of({"64", "128"}),                                                      \
    "prefill selection block size (the selection and prefill kernels' tile)")                                       \
  X("indexer", int64_t, query_sub_blocks, 1, range(1, 1 << 16),                                                      \
    "prefill selection: pooled queries per query block (power of two <= block_size)")                               \
  X("indexer", std::string, sub_block_aggregate, "mean", one_of({"mean", "max"}),                                    \
    "prefill selection: combine sub-block/head block distributions by mean or max")                                 \
  X("indexer", double, retrieval_fraction, 0.15, range(0, 1), "fraction of KV heads kept as retrieval heads")       \
  X("indexer", double, kv_budget, 0, range(0, 1),                                                                    \
    "0: use retrieval_fraction; else the KV-memory fraction retrieval heads may use")                               \
  X("indexer", std::string, heads_file, "", any(), "head profile (HDF5) from rtpurbo-identify-heads")                \
  X("indexer", bool, heads_random, false, any(),                                                                    \
    "baseline: train on as many KV heads as heads_file selects (without heads_file: retrieval_fraction of all "    \
    "KV heads), drawn at random with the seed")                                                                      \
  X("indexer", int64_t, kl_query_samples, 256, at_least(1), "queries sampled per sequence for the KL loss")          \
  X("indexer", int64_t, kl_chunk, 1024, at_least(1), "keys per chunk when computing the KL (bounds memory)")
// clang-format on

struct TrainConfig {
#define RTP_TC_MEMBER(group, type, name, def, check, help) type name = def;
  RTP_TRAIN_CONFIG_FIELDS(RTP_TC_MEMBER)
#undef RTP_TC_MEMBER
};

using TrainConfigRegistry = rtp::config::Registry<TrainConfig>;
const TrainConfigRegistry& train_config_registry();

// Defaults, then each recipe in order (empty path: none), then the overrides in order; then validate().
// Overrides are (key, value) with key in snake_case or kebab-case.
TrainConfig load_train_config(const std::string& recipe_path,
                              const std::vector<std::pair<std::string, std::string>>& overrides = {});

// Cross-field checks (heads divide evenly, the toy vocabulary fits, needles fit in seq_len, ...). Throws
// rtp::Error naming the keys involved and `origin`.
void validate(const TrainConfig& c, const std::string& origin);

// Keys whose value differs from the default but which the configured run does not read: a key of the other stage,
// the toy task's keys with data 'files', the toy architecture when model_dir is given, retrieval_fraction with a
// heads_file, kv_budget (rtpurbo-identify-heads reads it; the trainer takes its heads from heads_file). Not an
// error: one recipe may serve both stages and rtpurbo-identify-heads. rtpurbo-train prints them as a warning, so
// that a setting that changes nothing does not pass for one that does.
std::vector<std::string> unread_settings(const TrainConfig& c);

// The merged config as YAML (with help comments), loadable as a recipe.
std::string dump_config(const TrainConfig& c, bool with_help = true);
bool operator==(const TrainConfig& a, const TrainConfig& b);
inline bool operator!=(const TrainConfig& a, const TrainConfig& b) { return !(a == b); }

}  // namespace rtp::train
