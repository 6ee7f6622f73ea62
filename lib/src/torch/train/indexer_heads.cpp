#include "rtp/train/indexer_heads.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "rtp/core/error.h"
#include "rtp/heads/head_profile.h"

namespace rtp::train {

sparse::HeadMap random_head_map(int64_t layers, int64_t kv_heads, int64_t group_size, int64_t count, uint64_t seed) {
  RTP_CHECK(count >= 0 && count <= layers * kv_heads, "random head map: cannot choose ", count, " of ",
            layers * kv_heads, " KV heads");
  std::vector<int64_t> all(layers * kv_heads);
  for (int64_t i = 0; i < layers * kv_heads; ++i) all[i] = i;
  std::mt19937_64 rng(seed);
  // Fisher-Yates with the top 53 bits, so that the draw is the same with every standard library.
  for (int64_t i = static_cast<int64_t>(all.size()) - 1; i > 0; --i) {
    const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
    std::swap(all[i], all[static_cast<int64_t>(u * static_cast<double>(i + 1))]);
  }
  auto map = sparse::HeadMap::all_streaming(layers, kv_heads, group_size);
  for (int64_t i = 0; i < count; ++i) map.retrieval[all[i] / kv_heads][all[i] % kv_heads] = 1;
  return map;
}

sparse::HeadMap resolve_training_heads(const TrainConfig& cfg, const model::ModelConfig& mc, const RunContext& ctx) {
  // Seeded apart from the run seed's other uses.
  const uint64_t draw_seed = ctx.seed * 6364136223846793005ULL + 1442695040888963407ULL;
  if (cfg.heads_file.empty() && cfg.heads_random) {
    // No profile (a model with random weights has nothing to profile): retrieval_fraction of all KV heads.
    const int64_t all = mc.num_hidden_layers * mc.num_key_value_heads;
    const auto count = std::max<int64_t>(1, static_cast<int64_t>(std::llround(cfg.retrieval_fraction * all)));
    return random_head_map(mc.num_hidden_layers, mc.num_key_value_heads,
                           mc.num_attention_heads / mc.num_key_value_heads, count, draw_seed);
  }
  RTP_CHECK(!cfg.heads_file.empty(), "stage 'indexer' needs heads_file (the HDF5 profile written by "
            "rtpurbo-identify-heads), or heads_random: true to train on retrieval_fraction of the KV heads drawn "
            "at random");
  auto profile = heads::load_head_profile(cfg.heads_file);
  auto map = heads::head_map_from_profile(profile);
  RTP_CHECK(map.num_layers == mc.num_hidden_layers && map.num_kv_heads == mc.num_key_value_heads, "'", cfg.heads_file,
            "' profiles ", map.num_layers, " layers x ", map.num_kv_heads, " KV heads, but the model '", cfg.model_dir,
            "' has ", mc.num_hidden_layers, " x ", mc.num_key_value_heads, " (profile of another model?)");
  if (!cfg.heads_random) return map;
  return random_head_map(map.num_layers, map.num_kv_heads, map.group_size, map.count_retrieval(), draw_seed);
}

}  // namespace rtp::train
