// Stage 1 of the method: train the indexer of a frozen model by forward KL against its retrieval heads' true
// attention (DESIGN.md "Stage 1 training").
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/data/toy_task.h"
#include "rtp/dist/distributed.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/sparse/indexer_training.h"
#include "rtp/sparse/sparse_attention.h"
#include "rtp/train/checkpoint.h"
#include "rtp/train/indexer_heads.h"
#include "rtp/train/lr_schedule.h"
#include "rtp/train/stages.h"
#include "rtp/train/toy_data.h"

namespace rtp::train {

namespace {

constexpr uint64_t kCalibrationStream = 2;

struct LayerCapture {
  torch::Tensor q_index, k_index;  // what the indexer reads (pre- or post-RoPE)
  torch::Tensor q, k;              // what attention reads (post-RoPE): the teacher
  double scale = 1.0;
};

// Runs the frozen model up to the last layer holding a retrieval head and keeps the q/k of those layers.
std::vector<LayerCapture> capture_layers(model::Qwen3Model& model, const sparse::HeadMap& heads,
                                         const torch::Tensor& ids, bool post_rope) {
  std::vector<LayerCapture> caps(heads.num_layers);
  int64_t last = -1;
  for (int64_t l = 0; l < heads.num_layers; ++l)
    if (!heads.retrieval_heads(l).empty()) last = l;
  if (last < 0) return caps;
  model::ForwardOptions o;
  o.stop_after_layer = last;
  o.observer = [&](const model::LayerAttentionInputs& in) {
    if (heads.retrieval_heads(in.layer).empty()) return;
    auto& c = caps[in.layer];
    c.q_index = post_rope ? in.q : in.q_pre_rope;
    c.k_index = post_rope ? in.k : in.k_pre_rope;
    c.q = in.q;
    c.k = in.k;
    c.scale = in.scale;
  };
  torch::NoGradGuard no_grad;
  model.forward(ids, o);
  return caps;
}

// Query positions for the KL: uniform over [first, T) without replacement, a pure function of (seed, step, row).
torch::Tensor sample_positions(int64_t T, int64_t first, int64_t count, uint64_t seed, torch::Device device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t span = T - first;
  auto perm = torch::randperm(span, gen, torch::TensorOptions(torch::kInt64));
  auto pos = perm.narrow(0, 0, std::min(count, span)) + first;
  return std::get<0>(torch::sort(pos)).to(device);
}

struct StepLoss {
  torch::Tensor loss;
  double recall = 0;
};

// `first_row`: the global index of this rank's first sequence, so that query positions do not depend on how the
// global batch is split over ranks.
StepLoss indexer_loss(const sparse::Indexer& indexer, const std::vector<LayerCapture>& caps, const TrainConfig& cfg,
                      uint64_t position_seed, bool want_recall, int64_t first_row) {
  const auto& heads = indexer.heads();
  const int64_t G = heads.group_size;
  torch::Tensor total;
  double recall = 0;
  int64_t terms = 0;
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    const auto ret = heads.retrieval_heads(l);
    if (ret.empty()) continue;
    const auto& c = caps[l];
    const int64_t B = c.q.size(0), T = c.q.size(2);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t first = std::min<int64_t>(T - 1, std::max<int64_t>(1, cfg.block_size));
      auto pos = sample_positions(T, first, cfg.kl_query_samples, position_seed + 7919 * (first_row + b) + 104729 * l,
                                  c.q.device());
      auto iq = indexer.index_queries(l, c.q_index.narrow(0, b, 1).index_select(2, pos))[0];  // [n, G, Nq, d]
      auto ik = indexer.index_keys(l, c.k_index.narrow(0, b, 1))[0];                          // [n, T, d]
      for (size_t r = 0; r < ret.size(); ++r) {
        const int64_t g = ret[r];
        sparse::KlInputs in;
        in.q = c.q[b].narrow(0, g * G, G).index_select(1, pos);
        in.k = c.k[b][g];
        in.index_q = iq[r];
        in.index_k = ik[r];
        in.positions = pos;
        in.scale = c.scale;
        in.key_chunk = cfg.kl_chunk;
        auto res = sparse::indexer_kl(in, want_recall ? cfg.top_p : 0.0);
        total = total.defined() ? total + res.loss : res.loss;
        recall += res.recall;
        ++terms;
      }
    }
  }
  RTP_CHECK(terms > 0, "the head map selects no retrieval head: nothing to train");
  return {total / static_cast<double>(terms), recall / static_cast<double>(terms)};
}

std::vector<data::ToySample> training_samples(const data::ToyTask& task, const TrainConfig& cfg, uint64_t stream,
                                              int64_t cursor, int64_t count) {
  return task.generate_many(cfg.seq_len, static_cast<uint64_t>(cfg.seed), stream, static_cast<uint64_t>(cursor), count);
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
  RTP_CHECK(cfg.data == "toy", "stage 'indexer' currently trains on the toy task (data: toy); data '", cfg.data,
            "' needs the text loader of the RULER issue");
  if (lead) make_directories(cfg.out_dir);
  if (ctx.device.is_cuda()) at::globalContext().setAllowTF32CuBLAS(true);
  if (lead)
    std::cerr << "indexer: seed " << cfg.seed << ", device " << ctx.device << ", model " << cfg.model_dir << ", "
              << env.world_size << " rank(s) (" << env.source << "), " << local_batch << " sequences per rank\n";

  auto model = model::load_qwen3(cfg.model_dir, ctx.device, ctx.dtype);
  for (auto& kv : model.named_parameters()) kv.second.requires_grad_(false);
  const auto& mc = model.config();
  const sparse::HeadMap heads = resolve_training_heads(cfg, mc, ctx);
  if (lead) std::cerr << "indexer: " << heads.count_retrieval() << " of " << heads.num_layers * heads.num_kv_heads
            << " KV heads are retrieval heads" << (cfg.heads_random ? " (random baseline)" : "") << "\n";
  const bool post_rope = cfg.indexer_position == "post_rope";
  sparse::SparseSettings settings;
  settings.sink = cfg.sink;
  settings.window = cfg.window;
  settings.block_size = cfg.block_size;
  settings.top_p = cfg.top_p;
  settings.query_sub_blocks = cfg.query_sub_blocks;
  settings.indexer_dim = cfg.indexer_dim;
  settings.post_rope_indexer = post_rope;

  const data::ToyTask task(toy_task_config(cfg));
  sparse::Indexer indexer(heads, mc.head_dim, cfg.indexer_dim);
  {
    // Principal-subspace initialisation from one calibration batch (its own data stream).
    auto calib = training_samples(task, cfg, kCalibrationStream, 0, cfg.batch_size);
    auto caps = capture_layers(model, heads, data::stack_ids(calib), post_rope);
    std::vector<torch::Tensor> qs(heads.num_layers), ks(heads.num_layers);
    for (int64_t l = 0; l < heads.num_layers; ++l) {
      if (!caps[l].q_index.defined()) continue;
      // [B, H, T, D] -> [H, B*T, D]
      qs[l] = caps[l].q_index.transpose(0, 1).reshape({mc.num_attention_heads, -1, mc.head_dim});
      ks[l] = caps[l].k_index.transpose(0, 1).reshape({mc.num_key_value_heads, -1, mc.head_dim});
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
      auto st = load_checkpoint(*dir, params, optimizer);
      step = st.step;
      cursor = st.data_cursor;
      if (lead) std::cerr << "indexer: resumed from " << *dir << " at step " << step << "\n";
    } else if (lead) {
      std::cerr << "indexer: --resume given but " << cfg.out_dir << " has no checkpoint; starting at step 0\n";
    }
  }

  auto t0 = std::chrono::steady_clock::now();
  int64_t tokens_since = 0;
  const int64_t stop = cfg.stop_at_step > 0 ? std::min(cfg.stop_at_step, cfg.steps) : cfg.steps;
  for (; step < stop; ++step) {
    const double lr = lr_at_step(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    // Each rank reads its own slice of the global batch: samples cursor + rank * local_batch, ...
    auto samples = training_samples(task, cfg, kTrainStream, cursor + env.rank * local_batch, local_batch);
    cursor += cfg.batch_size;
    auto caps = capture_layers(model, heads, data::stack_ids(samples), post_rope);
    const bool log_now = (step + 1) % cfg.log_every == 0 || step + 1 == cfg.steps || step == 0;
    auto res = indexer_loss(indexer, caps, cfg, static_cast<uint64_t>(cfg.seed) * 1000003ULL + step, log_now,
                            env.rank * local_batch);
    optimizer.zero_grad();
    res.loss.backward();
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
    if (log_now && env.distributed()) {
      const double loss = world.allreduce_mean(res.loss.item<double>());
      const double recall = world.allreduce_mean(res.recall);
      res.loss = torch::tensor(loss);
      res.recall = recall;
    }
    if (log_now && lead) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cerr << "indexer step " << step + 1 << "/" << cfg.steps << "  kl " << fmt("%.4f", res.loss.item<double>())
                << "  recall@p" << cfg.top_p << " " << fmt("%.3f", res.recall) << "  lr " << fmt("%.2e", lr)
                << "  tok/s " << fmt("%.0f", tokens_since / std::max(secs, 1e-9)) << "\n";
      t0 = std::chrono::steady_clock::now();
      tokens_since = 0;
    }
    if (lead && cfg.save_every > 0 && (step + 1) % cfg.save_every == 0 && step + 1 < cfg.steps) {
      CheckpointState st;
      st.step = step + 1;
      st.data_cursor = cursor;
      st.seed = static_cast<uint64_t>(cfg.seed);
      st.config = cfg;
      save_checkpoint(cfg.out_dir, params, optimizer, st, cfg.keep_checkpoints);
    }
  }
  if (step < cfg.steps) {
    if (!lead) return;
    CheckpointState st;
    st.step = step;
    st.data_cursor = cursor;
    st.seed = static_cast<uint64_t>(cfg.seed);
    st.config = cfg;
    auto dir = save_checkpoint(cfg.out_dir, params, optimizer, st, cfg.keep_checkpoints);
    std::cerr << "indexer: stopped at step " << step << " (stop_at_step); resume with --resume: " << dir << "\n";
    return;
  }

  if (!lead) return;
  // Block-level check on held-out sequences: the selection the sparse forward will really use.
  {
    torch::NoGradGuard no_grad;
    sparse::SparseAttention sparse_attn(heads, settings, &indexer);
    sparse_attn.set_measure_recall(true);
    auto eval = task.generate_many(cfg.seq_len, static_cast<uint64_t>(cfg.seed), kEvalStream, 0,
                                   std::min<int64_t>(cfg.eval_samples, 8));
    model::ForwardOptions o;
    o.attention = &sparse_attn;
    for (const auto& s : eval) model.forward(data::stack_ids({s}), o);
    std::cerr << "indexer: held-out block selection: recall of true attention mass " << fmt("%.3f", sparse_attn.stats().recall())
              << ", attention fraction " << fmt("%.3f", sparse_attn.stats().attention_fraction()) << "\n";
  }
  const std::string out = cfg.out_dir + "/indexer.safetensors";
  sparse::save_indexer_checkpoint(out, indexer, settings);
  std::cerr << "indexer: wrote " << out << "\n";
}

}  // namespace rtp::train
