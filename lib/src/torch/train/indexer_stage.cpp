// Stage 1 of the method: train the indexer of a frozen model by forward KL against its retrieval heads' true
// attention (DESIGN.md "Stage 1 training").
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/core/human_units.h"
#include "rtp/data/toy_task.h"
#include "rtp/dist/distributed.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/sparse/indexer_training.h"
#include "rtp/sparse/sparse_attention.h"
#include "rtp/text/text_corpus.h"
#include "rtp/train/checkpoint.h"
#include "rtp/train/indexer_heads.h"
#include "rtp/train/lr_schedule.h"
#include "rtp/train/stages.h"
#include "rtp/train/toy_data.h"
#include "rtp/torch/device_memory.h"
#include "rtp/torch/run_context.h"
#include "rtp/train/cuda_math_scope.h"

namespace rtp::train {

namespace {

constexpr uint64_t kCalibrationStream = 2;
// Token rows per sequence the SVD initialisation reads: its second moments need no more, and at 32K tokens the
// whole q of every retrieval layer would not fit next to a 30B model.
constexpr int64_t kCalibrationRows = 4096;
constexpr int64_t kHeldOutCheckMaxLen = 8192;

// What one layer holding retrieval heads hands to the loss, per sequence of the batch. Only the query rows the
// KL samples are kept (the teacher needs every key, but only Nq queries), so a 32K-token step keeps megabytes of
// queries per layer instead of the whole [H, T, D].
struct LayerCapture {
  std::vector<torch::Tensor> positions;   // int64 [n]: the kept query rows (sorted)
  std::vector<torch::Tensor> q_index, q;  // [Hq, n, D]: what the indexer reads (pre- or post-RoPE); the teacher's
  std::vector<torch::Tensor> k_index, k;  // [Hkv, T, D] (or [Hkv, n, D] when keys are subsampled too)
  double scale = 1.0;
};

// Query positions: uniform over [first, T) without replacement, a pure function of (seed, step, row, layer).
torch::Tensor sample_positions(int64_t T, int64_t first, int64_t count, uint64_t seed, torch::Device device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t span = T - first;
  auto perm = torch::randperm(span, gen, torch::TensorOptions(torch::kInt64));
  auto pos = perm.narrow(0, 0, std::min(count, span)) + first;
  return std::get<0>(torch::sort(pos)).to(device);
}

// (sequence b of the batch, layer) -> the query rows to keep; an undefined tensor keeps them all.
using RowSampler = std::function<torch::Tensor(int64_t b, int64_t layer, int64_t T, torch::Device device)>;

// Runs the frozen model up to the last layer holding a retrieval head and keeps, for those layers, the sampled
// query rows and the keys (all of them, or the same rows with `subsample_keys`).
// `ids` holds sequences first_b, first_b + 1, ... of the batch (a micro-batch); results are appended to `caps`.
void capture_layers(model::Qwen3Model& model, const sparse::HeadMap& heads, const torch::Tensor& ids,
                    int64_t first_b, bool post_rope, const RowSampler& rows, bool subsample_keys,
                    std::vector<LayerCapture>& caps) {
  caps.resize(heads.num_layers);
  int64_t last = -1;
  for (int64_t l = 0; l < heads.num_layers; ++l)
    if (!heads.retrieval_heads(l).empty()) last = l;
  if (last < 0) return;
  model::ForwardOptions o;
  o.stop_after_layer = last;
  o.observer = [&](const model::LayerAttentionInputs& in) {
    if (heads.retrieval_heads(in.layer).empty()) return;
    auto& c = caps[in.layer];
    const auto& qi = post_rope ? in.q : in.q_pre_rope;
    const auto& ki = post_rope ? in.k : in.k_pre_rope;
    const int64_t T = in.q.size(2);
    c.scale = in.scale;
    for (int64_t b = 0; b < in.q.size(0); ++b) {
      auto pos = rows(first_b + b, in.layer, T, in.q.device());
      auto keep = [&](const torch::Tensor& t) { return pos.defined() ? t[b].index_select(1, pos) : t[b]; };
      c.positions.push_back(pos);
      c.q_index.push_back(keep(qi));
      c.q.push_back(keep(in.q));
      c.k_index.push_back(subsample_keys ? keep(ki) : ki[b]);
      c.k.push_back(subsample_keys ? keep(in.k) : in.k[b]);
    }
  };
  torch::NoGradGuard no_grad;
  model.forward(ids, o);
}

// Sequences per forward pass: the whole batch, or micro_batch.
int64_t micro_batch_size(const TrainConfig& cfg, int64_t batch) {
  return cfg.micro_batch > 0 ? std::min(cfg.micro_batch, batch) : batch;
}

struct StepLoss {
  double loss = 0;
  double recall = 0;
};

// The mean KL over every (sequence, retrieval KV head) of the batch; its gradient is accumulated into the
// indexer's .grad one (sequence, layer) at a time, so that only one layer's [G, Nq, T] student graph is alive at
// once (at 32K tokens the graphs of all layers together would take gigabytes).
// `terms`: the (sequence, retrieval KV head) pairs of the whole per-rank batch, of which `caps` may hold a
// micro-batch; the returned loss is this part's share of the mean, the recall a sum over its terms.
StepLoss indexer_loss_backward(const sparse::Indexer& indexer, const std::vector<LayerCapture>& caps,
                               const TrainConfig& cfg, bool want_recall, int64_t terms) {
  const auto& heads = indexer.heads();
  const int64_t G = heads.group_size;
  StepLoss out;
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    const auto ret = heads.retrieval_heads(l);
    if (ret.empty()) continue;
    const auto& c = caps[l];
    for (size_t b = 0; b < c.q.size(); ++b) {
      const auto& pos = c.positions[b];
      auto iq = indexer.index_queries(l, c.q_index[b].unsqueeze(0))[0];  // [n, G, Nq, d]
      auto ik = indexer.index_keys(l, c.k_index[b].unsqueeze(0))[0];     // [n, T, d]
      torch::Tensor layer_loss;
      for (size_t r = 0; r < ret.size(); ++r) {
        const int64_t g = ret[r];
        sparse::KlInputs in;
        in.q = c.q[b].narrow(0, g * G, G);
        in.k = c.k[b][g];
        in.index_q = iq[r];
        in.index_k = ik[r];
        in.positions = pos;
        in.scale = c.scale;
        in.key_chunk = cfg.kl_chunk;
        auto res = sparse::indexer_kl(in, want_recall ? cfg.top_p : 0.0);
        layer_loss = layer_loss.defined() ? layer_loss + res.loss : res.loss;
        out.recall += res.recall;
      }
      layer_loss = layer_loss / static_cast<double>(terms);
      layer_loss.backward();
      out.loss += layer_loss.item<double>();
    }
  }
  return out;
}

// Where the stage's sequences come from: the toy task's generator (data: toy; its own streams for calibration,
// training and the held-out check) or the user's documents (data: files; the first held_out sequences of the
// stream are the held-out set, calibration reads the first training sequences, training wraps around within the
// rest). Every method returns ids [count, seq_len] on the CPU; the same index gives the same sequence on every rank
// and after a resume. Made before the model loads, so that a missing tokenizer or data file is reported before
// minutes of loading; check_model then checks the pair.
class SequenceSource {
 public:
  SequenceSource(const TrainConfig& cfg, int64_t held_out) : cfg_(cfg), held_(held_out) {
    if (cfg.data == "toy") {
      toy_ = std::make_unique<data::ToyTask>(toy_task_config(cfg));
      return;
    }
    if (cfg.model_init == "load") require_directory(cfg.model_dir, "model directory", "(model_dir of the recipe)");
    const std::string tok = cfg.model_dir + "/tokenizer.json";
    RTP_CHECK(file_exists(tok), "data: files tokenizes the documents with the model's tokenizer, but '", tok,
              "' does not exist (copy the checkpoint's tokenizer.json into model_dir)");
    text::Tokenizer tokenizer = text::Tokenizer::from_file(tok);
    tokenizer_tokens_ = tokenizer.vocab_size();
    text::TextCorpusOptions o;
    for (size_t a = 0; a <= cfg.data_files.size();) {
      const size_t b = std::min(cfg.data_files.find(',', a), cfg.data_files.size());
      std::string f = cfg.data_files.substr(a, b - a);
      f.erase(0, f.find_first_not_of(" \t"));
      f.erase(f.find_last_not_of(" \t") + 1);
      if (!f.empty()) o.files.push_back(f);
      a = b + 1;
    }
    o.seq_len = cfg.seq_len;
    o.separator = cfg.data_separator;
    corpus_ = std::make_unique<text::TextCorpus>(std::move(o), std::move(tokenizer));
  }
  void check_model(const model::ModelConfig& mc) const {
    // For the toy task as for files: its generator makes sequences of any length.
    check_seq_len(cfg_, mc);
    if (toy_) {
      RTP_CHECK(cfg_.vocab_size <= mc.vocab_size, "data: toy draws token ids below vocab_size ", cfg_.vocab_size,
                " but model '", cfg_.model_dir, "' has vocab_size ", mc.vocab_size,
                ": set vocab_size to the toy task the model was trained on");
      return;
    }
    RTP_CHECK(mc.vocab_size >= tokenizer_tokens_, "model '", cfg_.model_dir, "' has vocab_size ", mc.vocab_size,
              " but its tokenizer.json has ", tokenizer_tokens_, " tokens: they do not belong together");
  }
  // seq_len against the positions the model has (a config without max_position_embeddings, 0, takes any length).
  static void check_seq_len(const TrainConfig& cfg, const model::ModelConfig& mc) {
    RTP_CHECK(mc.max_position_embeddings <= 0 || cfg.seq_len <= mc.max_position_embeddings, "seq_len ", cfg.seq_len,
              " exceeds the max_position_embeddings ", mc.max_position_embeddings, " of model '", cfg.model_dir,
              "' (its config.json): the model has no positions beyond it; set seq_len <= ",
              mc.max_position_embeddings);
  }
  torch::Tensor calibration(int64_t count) {
    return toy_ ? toy_ids(kCalibrationStream, 0, count) : file_ids(0, count, held_);
  }
  torch::Tensor training(int64_t index, int64_t count) {
    return toy_ ? toy_ids(kTrainStream, index, count) : file_ids(index, count, held_);
  }
  torch::Tensor held_out(int64_t count) {
    return toy_ ? toy_ids(kEvalStream, 0, count) : file_ids(0, std::min(count, held_), 0);
  }
  std::string describe() const { return toy_ ? "the toy task" : "data files: " + corpus_->describe(); }

 private:
  torch::Tensor toy_ids(uint64_t stream, int64_t index, int64_t count) const {
    return data::stack_ids(toy_->generate_many(cfg_.seq_len, static_cast<uint64_t>(cfg_.seed), stream,
                                               static_cast<uint64_t>(index), count));
  }
  torch::Tensor file_ids(int64_t index, int64_t count, int64_t first) {
    auto ids = torch::empty({count, cfg_.seq_len}, torch::kInt64);
    auto acc = ids.accessor<int64_t, 2>();
    for (int64_t b = 0; b < count; ++b) {
      const std::vector<int32_t> seq = corpus_->sequence(index + b, first);
      for (int64_t t = 0; t < cfg_.seq_len; ++t) acc[b][t] = seq[static_cast<size_t>(t)];
    }
    return ids;
  }

  const TrainConfig& cfg_;
  int64_t held_;
  int64_t tokenizer_tokens_ = 0;
  std::unique_ptr<data::ToyTask> toy_;
  std::unique_ptr<text::TextCorpus> corpus_;
};

// The retrieval KV heads as "layer.head" names, for a checkpoint's run_state and the messages that compare two.
nlohmann::json retrieval_head_names(const sparse::HeadMap& heads) {
  nlohmann::json names = nlohmann::json::array();
  for (int64_t l = 0; l < heads.num_layers; ++l)
    for (int64_t g = 0; g < heads.num_kv_heads; ++g)
      if (heads.is_retrieval(l, g)) names.push_back(str_cat(l, ".", g));
  return names;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace

void run_indexer_stage(const TrainConfig& cfg, RunContext& ctx) {
  validate(cfg, "indexer");
  const dist::DistEnv env = dist::read_dist_env();
  if (ctx.device.is_cuda() && env.distributed()) ctx.device = torch::Device(torch::kCUDA, env.local_rank);
  dist::Distributed world(env, std::chrono::seconds(cfg.dist_timeout_s), ctx.device);
  ctx.rank = env.rank;
  ctx.world_size = env.world_size;
  RTP_CHECK(cfg.batch_size % env.world_size == 0, "batch_size=", cfg.batch_size, " is the global batch and must be a ",
            "multiple of WORLD_SIZE=", env.world_size);
  const int64_t local_batch = cfg.batch_size / env.world_size;
  const bool lead = env.rank == 0;
  RTP_CHECK(!cfg.model_dir.empty(), "stage 'indexer' needs model_dir (the frozen model whose indexer is trained)");
  // The length against the model's config.json before anything is done with out_dir or the model loads (minutes
  // for a large one); check_model repeats it on the loaded model.
  if (file_exists(cfg.model_dir + "/config.json"))
    SequenceSource::check_seq_len(cfg, model::load_model_config(cfg.model_dir + "/config.json"));
  const std::string final_path = cfg.out_dir + "/indexer.safetensors";
  if (lead && !cfg.resume) check_fresh_start(cfg.out_dir, final_path);
  // The held-out check forms dense [T, T] attention per head: only up to kHeldOutCheckMaxLen tokens.
  const int64_t held_out = cfg.seq_len > kHeldOutCheckMaxLen ? 0 : std::min<int64_t>(cfg.eval_samples, 8);
  SequenceSource source(cfg, held_out);
  const CudaMathScope math_scope(ctx.device, true, "auto");  // TF32 for the frozen model's fp32 matmuls
  if (lead)
    std::cerr << "indexer: seed " << cfg.seed << ", device " << ctx.device << ", model " << cfg.model_dir << ", "
              << env.world_size << " rank(s) (" << env.source << "), " << local_batch << " sequences per rank"
              << (cfg.micro_batch > 0 && cfg.micro_batch < local_batch
                      ? str_cat(" in micro-batches of ", cfg.micro_batch) : std::string()) << "\n";

  auto model = cfg.model_init == "random"
                   ? model::random_qwen3(cfg.model_dir, ctx.device, ctx.dtype, ctx.seed, cfg.init_std)
                   : model::load_qwen3(cfg.model_dir, ctx.device, ctx.dtype);
  for (auto& kv : model.named_parameters()) kv.second.requires_grad_(false);
  if (lead) {
    int64_t n = 0, bytes = 0;
    for (auto& kv : model.named_parameters()) {
      n += kv.second.numel();
      bytes += kv.second.numel() * static_cast<int64_t>(kv.second.element_size());
    }
    std::cerr << "indexer: frozen model " << human_count(static_cast<double>(n)) << " parameters, "
              << human_bytes(static_cast<double>(bytes)) << " " << dtype_name(ctx.dtype) << " on " << ctx.device
              << (cfg.model_init == "random" ? " (model_init random: weights drawn, not loaded)" : "") << "\n";
  }
  const auto& mc = model.config();
  const sparse::HeadMap heads = resolve_training_heads(cfg, mc, ctx);
  const int64_t retrieval_per_sequence = heads.count_retrieval();
  RTP_CHECK(retrieval_per_sequence > 0, "the head map selects no retrieval head: nothing to train");
  if (lead) std::cerr << "indexer: " << heads.count_retrieval() << " of " << heads.num_layers * heads.num_kv_heads
            << " KV heads are retrieval heads" << (cfg.heads_random ? " (random baseline)" : "") << "\n";
  const bool post_rope = cfg.indexer_position == "post_rope";
  sparse::SparseSettings settings;
  settings.sink = cfg.sink;
  settings.window = cfg.window;
  settings.block_size = cfg.block_size;
  settings.top_p = cfg.top_p;
  settings.query_sub_blocks = cfg.query_sub_blocks;
  settings.sub_block_aggregate = cfg.sub_block_aggregate;
  settings.indexer_dim = cfg.indexer_dim;
  settings.post_rope_indexer = post_rope;

  source.check_model(mc);
  sparse::Indexer indexer(heads, mc.head_dim, cfg.indexer_dim);
  {
    // Principal-subspace initialisation from one calibration batch.
    const auto calib_ids = source.calibration(cfg.batch_size);
    if (lead) std::cerr << "indexer: data from " << source.describe() << "\n";
    const RowSampler calib_rows = [&](int64_t b, int64_t, int64_t T, torch::Device dev) {
      if (T <= kCalibrationRows) return torch::Tensor();
      return sample_positions(T, 0, kCalibrationRows, ctx.seed * 2654435761ULL + 7919 * b, dev);
    };
    std::vector<LayerCapture> caps;
    const int64_t mb = micro_batch_size(cfg, calib_ids.size(0));
    for (int64_t b = 0; b < calib_ids.size(0); b += mb)
      capture_layers(model, heads, calib_ids.narrow(0, b, std::min(mb, calib_ids.size(0) - b)), b, post_rope,
                     calib_rows, /*subsample_keys=*/true, caps);
    std::vector<torch::Tensor> qs(heads.num_layers), ks(heads.num_layers);
    for (int64_t l = 0; l < heads.num_layers; ++l) {
      if (caps[l].q_index.empty()) continue;
      // per sequence [H, n, D] -> [H, B*n, D]
      qs[l] = torch::cat(caps[l].q_index, 1);
      ks[l] = torch::cat(caps[l].k_index, 1);
    }
    sparse::init_indexer_svd(indexer, qs, ks);
  }
  indexer.to(ctx.device, torch::kFloat32);
  NamedParams params = indexer.named_parameters();
  {
    std::vector<torch::Tensor> ps;
    for (auto& kv : params) ps.push_back(kv.second);
    world.broadcast(ps);  // identical already (same calibration data); made certain
  }
  for (auto& kv : params) kv.second.requires_grad_(true);
  std::vector<torch::Tensor> trainable;
  for (auto& kv : params) trainable.push_back(kv.second);
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(cfg.lr)
                                               .betas({cfg.beta1, cfg.beta2})
                                               .eps(cfg.adam_eps)
                                               .weight_decay(cfg.weight_decay));

  int64_t step = 0, cursor = 0;
  if (cfg.resume) {
    if (auto dir = latest_checkpoint(cfg.out_dir)) {
      // Before the tensors: another head map with as many heads per layer would load without a shape error.
      const nlohmann::json was = checkpoint_run_state(*dir);
      if (was.contains("retrieval_heads"))
        RTP_CHECK(was["retrieval_heads"] == retrieval_head_names(heads), "--resume from '", *dir,
                  "': it trained the indexer of retrieval heads ", was["retrieval_heads"].dump(), ", but this run's ",
                  cfg.heads_random ? "random draw" : str_cat("heads_file '", cfg.heads_file, "'"), " selects ",
                  retrieval_head_names(heads).dump(), " (was the profile regenerated?): resume with the head map it "
                  "was trained for, or start a new run in another out_dir");
      auto st = load_checkpoint(*dir, params, optimizer);
      check_resume_config(*dir, st.config, cfg);
      // eval_samples is tolerated (evaluation), except where it sets how many documents are held out before the
      // training sequences: another count would continue on other sequences.
      const auto held_of = [](const TrainConfig& c) {
        return c.data != "files" || c.seq_len > kHeldOutCheckMaxLen ? int64_t{0} : std::min<int64_t>(c.eval_samples, 8);
      };
      RTP_CHECK(held_of(st.config) == held_of(cfg), "--resume from '", *dir, "': eval_samples ", cfg.eval_samples,
                " (checkpoint ", st.config.eval_samples, ") holds out ", held_of(cfg), " of the documents' sequences, "
                "not ", held_of(st.config), ": training would continue on other sequences (resume with eval_samples ",
                st.config.eval_samples, ")");
      step = st.step;
      cursor = st.data_cursor;
      if (lead) std::cerr << "indexer: resumed from " << *dir << " at step " << step << "\n";
    } else if (lead) {
      std::cerr << "indexer: --resume given but " << cfg.out_dir << " has no checkpoint; starting at step 0\n";
    }
  }

  // One JSON line per logged step, like the pretrain stage's: started afresh at step 0, appended to on resume.
  const std::string log_path = cfg.out_dir + "/log.jsonl";
  std::ofstream log;
  if (lead) {
    // Created only now: a run that fails while loading or initialising leaves no empty out_dir behind.
    make_directories(cfg.out_dir);
    start_step_log(log_path, step);
    log.open(log_path, std::ios::app);
    RTP_CHECK(log.good(), "cannot open '", log_path, "' for appending");
  }
  const auto checkpoint_state = [&](int64_t at_step) {
    CheckpointState st;
    st.step = at_step;
    st.data_cursor = cursor;
    st.seed = static_cast<uint64_t>(cfg.seed);
    st.config = cfg;
    st.run_state = {{"retrieval_heads", retrieval_head_names(heads)}};
    return st;
  };
  auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_since = 0, steps_since = 0;
  const int64_t stop = cfg.stop_at_step > 0 ? std::min(cfg.stop_at_step, cfg.steps) : cfg.steps;
  for (; step < stop; ++step) {
    const double lr = lr_at_step(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    // Each rank reads its own slice of the global batch: samples cursor + rank * local_batch, ...
    const auto ids = source.training(cursor + env.rank * local_batch, local_batch);
    cursor += cfg.batch_size;
    // Query rows depend on the global index of the sequence, not on how the global batch is split over ranks.
    const uint64_t position_seed = static_cast<uint64_t>(cfg.seed) * 1000003ULL + step;
    const int64_t first_row = env.rank * local_batch;
    const RowSampler kl_rows = [&](int64_t b, int64_t l, int64_t T, torch::Device dev) {
      const int64_t first = std::min<int64_t>(T - 1, std::max<int64_t>(1, cfg.block_size));
      return sample_positions(T, first, cfg.kl_query_samples, position_seed + 7919 * (first_row + b) + 104729 * l,
                              dev);
    };
    const bool log_now = (step + 1) % cfg.log_every == 0 || step + 1 == cfg.steps || step == 0;
    optimizer.zero_grad();
    // Gradients accumulate over micro-batches: only one micro-batch's captures are alive at a time.
    const int64_t mb = micro_batch_size(cfg, local_batch);
    StepLoss res;
    for (int64_t b = 0; b < local_batch; b += mb) {
      std::vector<LayerCapture> caps;
      capture_layers(model, heads, ids.narrow(0, b, std::min(mb, local_batch - b)), b, post_rope, kl_rows,
                     /*subsample_keys=*/false, caps);
      const StepLoss part = indexer_loss_backward(indexer, caps, cfg, log_now, local_batch * retrieval_per_sequence);
      res.loss += part.loss;
      res.recall += part.recall;
    }
    res.recall /= static_cast<double>(local_batch * retrieval_per_sequence);
    if (env.distributed()) {
      // Every rank's loss is the mean over its equal share of the global batch: the mean of the gradients is the
      // gradient of the global mean.
      std::vector<torch::Tensor> grads;
      for (auto& p : trainable) grads.push_back(p.grad());
      world.allreduce_mean(grads);
    }
    if (cfg.grad_clip > 0) torch::nn::utils::clip_grad_norm_(trainable, cfg.grad_clip);
    optimizer.step();
    tokens_since += cfg.batch_size * cfg.seq_len;
    ++steps_since;
    if (log_now && env.distributed()) {
      res.loss = world.allreduce_mean(res.loss);
      res.recall = world.allreduce_mean(res.recall);
    }
    if (log_now && lead) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cerr << "indexer step " << step + 1 << "/" << cfg.steps << "  kl " << fmt("%.4f", res.loss)
                << "  recall@p" << cfg.top_p << " " << fmt("%.3f", res.recall) << "  lr " << fmt("%.2e", lr)
                << "  tok/s " << fmt("%.0f", tokens_since / std::max(secs, 1e-9)) << "  s/step "
                << fmt("%.3f", secs / std::max<int64_t>(steps_since, 1));
      if (ctx.device.is_cuda()) {
        const DeviceMemory mem = device_memory(ctx.device);
        std::cerr << "  peak GPU mem " << fmt("%.1f", mem.peak_allocated / 1e9) << " GB (reserved "
                  << fmt("%.1f", mem.peak_reserved / 1e9) << " of " << fmt("%.1f", mem.total / 1e9) << ")";
      }
      std::cerr << "\n";
      const nlohmann::ordered_json line = {{"step", step + 1}, {"kl", res.loss}, {"recall", res.recall}, {"top_p", cfg.top_p},
                                   {"lr", lr}, {"tokens_per_s", tokens_since / std::max(secs, 1e-9)},
                                   {"s_per_step", secs / std::max<int64_t>(steps_since, 1)}};
      log << line.dump() << "\n" << std::flush;
      t0 = std::chrono::steady_clock::now();
      tokens_since = 0;
      steps_since = 0;
    }
    // The last step's checkpoint too, whatever save_every: a finished run can be extended (--resume --steps M).
    // A stop (stop_at_step) saves below.
    if (lead && ((cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) || step + 1 == cfg.steps)) {
      std::cerr << "indexer: checkpoint " << save_checkpoint(cfg.out_dir, params, optimizer, checkpoint_state(step + 1),
                                                                cfg.keep_checkpoints)
                << "\n";
    }
  }
  if (step < cfg.steps) {
    if (!lead) return;
    auto dir = save_checkpoint(cfg.out_dir, params, optimizer, checkpoint_state(step), cfg.keep_checkpoints);
    std::cerr << "indexer: stopped at step " << step << " (stop_at_step); resume with --resume: " << dir << "\n";
    return;
  }

  if (!lead) return;
  // Written before the held-out check, so that a failure there does not lose the training.
  sparse::save_indexer_checkpoint(final_path, indexer, settings);
  std::cerr << "indexer: wrote " << final_path << "\n";
  // Block-level check on held-out sequences: the selection the sparse forward will really use. Its recall needs
  // each head's dense [T, T] probabilities, so long sequences skip it.
  if (cfg.seq_len > kHeldOutCheckMaxLen) {
    std::cerr << "indexer: held-out block-selection check skipped: seq_len " << cfg.seq_len << " > "
              << kHeldOutCheckMaxLen << " (it forms dense [T, T] attention per head)\n";
  } else {
    torch::NoGradGuard no_grad;
    sparse::SparseAttention sparse_attn(heads, settings, &indexer);
    sparse_attn.set_measure_recall(true);
    const auto eval = source.held_out(held_out);
    model::ForwardOptions o;
    o.attention = &sparse_attn;
    for (int64_t b = 0; b < eval.size(0); ++b) model.forward(eval.narrow(0, b, 1), o);
    std::cerr << "indexer: held-out block selection: recall of true attention mass " << fmt("%.3f", sparse_attn.stats().recall())
              << ", attention fraction " << fmt("%.3f", sparse_attn.stats().attention_fraction()) << "\n";
  }
}

}  // namespace rtp::train
