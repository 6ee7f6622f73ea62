#include "rtp/train/recipe.h"

#include <cctype>
#include <set>

#include "rtp/core/error.h"
#include "rtp/data/toy_task.h"
#include "rtp/kernels/sparse_attention_params.h"
#include "rtp/train/toy_data.h"

namespace rtp::train {

const TrainConfigRegistry& train_config_registry() {
  static const TrainConfigRegistry registry = [] {
    TrainConfigRegistry r("train config");
#define RTP_TC_FIELD(group, type, name, def, check, help) r.add(group, #name, &TrainConfig::name, check, help);
    RTP_TRAIN_CONFIG_FIELDS(RTP_TC_FIELD)
#undef RTP_TC_FIELD
    return r;
  }();
  return registry;
}

TrainConfig load_train_config(const std::string& recipe_path,
                              const std::vector<std::pair<std::string, std::string>>& overrides) {
  const auto& reg = train_config_registry();
  TrainConfig c;
  if (!recipe_path.empty()) reg.apply_yaml_file(c, recipe_path);
  reg.apply_overrides(c, overrides);
  validate(c, recipe_path.empty() ? std::string("config") : str_cat("recipe '", recipe_path, "' + command line"));
  return c;
}

namespace {

// The spelling only: whether a CUDA device is present is the run's business, so that --dump-config of a GPU recipe
// works on any machine and still rejects what the run would reject by name.
bool is_device_name(const std::string& d) {
  if (d == "auto" || d == "cpu" || d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5) return false;
  for (size_t i = 5; i < d.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

}  // namespace

void validate(const TrainConfig& c, const std::string& origin) {
  const std::string w = origin + ": ";
  RTP_CHECK(is_device_name(c.device), w, "device '", c.device, "' is not a device: expected cpu, cuda, cuda:N or auto");
  // Checked for every stage, not only where it breaks: the block selection reads 16-dim index vectors, so an
  // indexer of another width would train to the end and only then fail (without saving) in the held-out check.
  RTP_CHECK(c.indexer_dim == rtp::kernels::kIndexDim, w, "indexer_dim must be ", rtp::kernels::kIndexDim,
            " (the block selection, CPU reference and CUDA kernels, is built for ", rtp::kernels::kIndexDim,
            "-dim index vectors), found ", c.indexer_dim);
  RTP_CHECK(c.warmup_steps <= c.steps || c.steps == 0, w, "warmup_steps (", c.warmup_steps, ") must be <= steps (",
            c.steps, ")");
  if (c.stage == "pretrain" && c.model_dir.empty()) {
    RTP_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, w, "num_attention_heads (", c.num_attention_heads,
              ") must be a multiple of num_key_value_heads (", c.num_key_value_heads, ")");
    RTP_CHECK(c.head_dim % 2 == 0, w, "head_dim (", c.head_dim, ") must be even (RoPE rotates pairs)");
    RTP_CHECK(c.max_position_embeddings >= c.seq_len, w, "max_position_embeddings (", c.max_position_embeddings,
              ") must be >= seq_len (", c.seq_len, ")");
  }
  if (c.data == "toy") {
    const data::ToyTaskConfig t = toy_task_config(c);
    t.validate(origin);
    RTP_CHECK(c.seq_len >= t.min_seq_len(), w, "seq_len (", c.seq_len, ") is too short for the toy task: ",
              c.toy_needles, " toy_needles, ", c.toy_queries, " toy_queries and ", c.toy_spans, " toy_spans of ",
              c.toy_span_len, " need at least ", t.min_seq_len(), " tokens");
    if (c.curriculum_start_len > 0)
      RTP_CHECK(c.curriculum_start_len >= t.min_seq_len() && c.curriculum_start_len <= c.seq_len, w,
                "curriculum_start_len (", c.curriculum_start_len, ") must be in [", t.min_seq_len(),
                " (the toy task's shortest sequence), seq_len (", c.seq_len, ")]");
  } else {
    RTP_CHECK(!c.data_files.empty(), w, "data is 'files' but data_files is empty: give comma-separated paths");
    RTP_CHECK(c.stage != "pretrain", w, "stage 'pretrain' trains on the toy task only: set data to toy");
  }
  if (c.stage == "indexer")
    RTP_CHECK(!c.model_dir.empty(), w, "stage 'indexer' needs model_dir (the model whose indexer is trained)");
  // The one unread key that would silently change an experiment: a random-heads baseline sized by kv_budget.
  if (c.stage == "indexer" && c.heads_random && c.heads_file.empty())
    RTP_CHECK(c.kv_budget == 0, w, "heads_random without heads_file draws retrieval_fraction (", c.retrieval_fraction,
              ") of the KV heads; kv_budget (", c.kv_budget, ") is read by rtpurbo-identify-heads only: set "
              "retrieval_fraction, or give heads_file to draw as many heads as that profile selects");
  RTP_CHECK(c.micro_batch == 0 || c.stage == "indexer", w, "micro_batch is read by stage 'indexer' only (stage '",
            c.stage, "' runs its whole batch at once): remove it or set it to 0");
  if (c.model_init == "random")
    RTP_CHECK(!c.model_dir.empty(), w, "model_init 'random' builds the architecture of model_dir/config.json: set "
              "model_dir (for the toy architecture fields, leave model_dir empty and model_init 'load')");
  RTP_CHECK((c.query_sub_blocks & (c.query_sub_blocks - 1)) == 0 && c.query_sub_blocks <= c.block_size, w,
            "query_sub_blocks (", c.query_sub_blocks, ") must be a power of two <= block_size (", c.block_size,
            "): equal sub-blocks tile a query block");
}

namespace {

// Which stage reads which key, from the stages' code (stages.cpp, indexer_stage.cpp, indexer_heads.cpp, toy_data.cpp);
// keys not named here are read by every stage.
bool run_reads(const TrainConfig& c, const std::string& key) {
  static const std::set<std::string> pretrain_only = {
      "autocast", "sdpa_backend", "eval_every", "save_dtype", "answer_loss_weight", "curriculum_start_len",
      "curriculum_steps"};
  static const std::set<std::string> indexer_only = {
      "dist_timeout_s", "model_init", "micro_batch", "indexer_dim", "indexer_position", "top_p", "sink", "window",
      "block_size", "query_sub_blocks", "sub_block_aggregate", "heads_file", "heads_random", "kl_query_samples",
      "kl_chunk"};
  static const std::set<std::string> toy_architecture = {
      "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
      "head_dim", "rope_theta", "max_position_embeddings", "tie_word_embeddings"};
  const bool pretrain = c.stage == "pretrain";
  const bool toy_data = c.data == "toy";
  // Pretraining from model_dir continues that checkpoint; without it a fresh model of the toy architecture is built.
  const bool fresh_toy_model = pretrain && c.model_dir.empty();
  if (pretrain_only.count(key)) return pretrain;
  if (indexer_only.count(key)) return !pretrain;
  if (toy_architecture.count(key)) return fresh_toy_model;
  if (key == "vocab_size") return toy_data || fresh_toy_model;  // the toy task's token ids live in it
  if (key.rfind("toy_", 0) == 0) return toy_data;
  if (key == "data_files" || key == "data_separator") return !toy_data;
  if (key == "init_std") return fresh_toy_model || (!pretrain && c.model_init == "random");
  // Without a heads_file, heads_random draws retrieval_fraction of the KV heads; with one, the file decides.
  if (key == "retrieval_fraction") return !pretrain && c.heads_random && c.heads_file.empty();
  if (key == "kv_budget") return false;
  return true;
}

}  // namespace

std::vector<std::string> unread_settings(const TrainConfig& c) {
  std::vector<std::string> unread;
  for (const auto& f : train_config_registry().fields())
    if (f.get(c) != f.default_text && !run_reads(c, f.name)) unread.push_back(f.name);
  return unread;
}

std::string dump_config(const TrainConfig& c, bool with_help) {
  return train_config_registry().to_yaml(c, with_help);
}

bool operator==(const TrainConfig& a, const TrainConfig& b) { return train_config_registry().equal(a, b); }

}  // namespace rtp::train
