#pragma once
// Which KV heads the indexer stage trains: the selection stored in the head profile (heads_file), or, for the
// random-heads baseline (heads_random), the same number of KV heads drawn at random with the run's seed.
#include "rtp/model/model_config.h"
#include "rtp/sparse/head_map.h"
#include "rtp/torch/run_context.h"
#include "rtp/train/recipe.h"

namespace rtp::train {

sparse::HeadMap resolve_training_heads(const TrainConfig& cfg, const model::ModelConfig& mc, const RunContext& ctx);

// `count` KV heads chosen uniformly at random (without replacement) over all layers, seeded.
sparse::HeadMap random_head_map(int64_t layers, int64_t kv_heads, int64_t group_size, int64_t count, uint64_t seed);

}  // namespace rtp::train
