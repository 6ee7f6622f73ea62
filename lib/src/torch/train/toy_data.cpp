#include "rtp/train/toy_data.h"

#include <algorithm>

namespace rtp::train {

data::ToyTaskConfig toy_task_config(const TrainConfig& c) {
  data::ToyTaskConfig t;
  t.vocab_size = c.vocab_size;
  t.num_filler = c.toy_num_filler;
  t.num_keys = c.toy_num_keys;
  t.num_values = c.toy_num_values;
  t.key_len = c.toy_key_len;
  t.value_len = c.toy_value_len;
  t.num_needles = c.toy_needles;
  t.num_queries = c.toy_queries;
  t.num_spans = c.toy_spans;
  t.span_len = c.toy_span_len;
  t.markov_branching = c.toy_markov_branching;
  t.markov_lag = c.toy_markov_lag;
  t.random_spans = c.toy_random_spans;
  t.adjacent = c.toy_adjacent;
  t.world_seed = static_cast<uint64_t>(c.toy_world_seed);
  return t;
}

model::ModelConfig toy_model_config(const TrainConfig& c) {
  model::ModelConfig m;
  m.model_type = "qwen3";
  m.vocab_size = c.vocab_size;
  m.hidden_size = c.hidden_size;
  m.intermediate_size = c.intermediate_size;
  m.num_hidden_layers = c.num_hidden_layers;
  m.num_attention_heads = c.num_attention_heads;
  m.num_key_value_heads = c.num_key_value_heads;
  m.head_dim = c.head_dim;
  m.max_position_embeddings = c.max_position_embeddings;
  m.rope_theta = c.rope_theta;
  m.tie_word_embeddings = c.tie_word_embeddings;
  m.torch_dtype = c.save_dtype;
  return m;
}

int64_t seq_len_at_step(const TrainConfig& c, int64_t step) {
  if (c.curriculum_start_len <= 0 || c.curriculum_start_len >= c.seq_len) return c.seq_len;
  if (c.curriculum_steps <= 0 || step >= c.curriculum_steps) return c.seq_len;
  const double f = static_cast<double>(step) / static_cast<double>(c.curriculum_steps);
  int64_t len = c.curriculum_start_len + static_cast<int64_t>(f * static_cast<double>(c.seq_len - c.curriculum_start_len));
  len = (len / 64) * 64;
  return std::clamp<int64_t>(len, c.curriculum_start_len, c.seq_len);
}

}  // namespace rtp::train
