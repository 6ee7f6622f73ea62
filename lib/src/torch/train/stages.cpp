#include "rtp/train/stages.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/data/toy_task.h"
#include "rtp/model/qwen3.h"
#include "rtp/train/checkpoint.h"
#include "rtp/train/lr_schedule.h"
#include "rtp/train/toy_data.h"
#include "rtp/train/cuda_math_scope.h"

namespace rtp::train {

RunContext make_run_context(const TrainConfig& cfg) {
  RunContext ctx;
  ctx.seed = static_cast<uint64_t>(cfg.seed);
  ctx.device = parse_device(cfg.device);
  ctx.dtype = parse_dtype(cfg.dtype);
  return ctx;
}

TrainResult run_stage(const TrainConfig& cfg, RunContext& ctx) {
  if (cfg.stage == "pretrain") return run_pretrain_stage(cfg, ctx);
  if (cfg.stage == "indexer") {
    run_indexer_stage(cfg, ctx);
    return {};
  }
  RTP_THROW("unknown stage '", cfg.stage, "': expected pretrain or indexer");
}

namespace {

// AdamW with decoupled weight decay on matrices only: norm gains (and biases) are not decayed.
torch::optim::AdamW make_optimizer(const NamedParams& params, const TrainConfig& cfg) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& [name, p] : params) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(cfg.lr)
                                                            .betas({cfg.beta1, cfg.beta2})
                                                            .eps(cfg.adam_eps)
                                                            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, opts(cfg.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, opts(0.0));
  return torch::optim::AdamW(groups, torch::optim::AdamWOptions(cfg.lr));
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// bf16 autocast for the duration of a forward pass: matmuls and attention in bf16 (flash attention instead of
// SDPA's fp32 fallback), parameters and their gradients stay fp32. Restores the previous state on exit.
class AutocastScope {
 public:
  AutocastScope(const torch::Device& device, bool enable) : type_(device.type()), enable_(enable) {
    if (!enable_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(type_);
    previous_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::set_autocast_enabled(type_, true);
  }
  ~AutocastScope() {
    if (!enable_) return;
    at::autocast::set_autocast_enabled(type_, was_enabled_);
    at::autocast::set_autocast_dtype(type_, previous_dtype_);
    at::autocast::clear_cache();  // the cached bf16 weight copies are stale after the optimizer step
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  at::DeviceType type_;
  bool enable_;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

}  // namespace

TrainResult run_pretrain_stage(const TrainConfig& cfg, RunContext& ctx) {
  validate(cfg, "pretrain");
  RTP_CHECK(cfg.data == "toy", "stage 'pretrain' trains on the toy task (data: toy); got data '", cfg.data, "'");
  const data::ToyTask task(toy_task_config(cfg));
  // TF32 tensor cores for fp32 matmuls on GPU: ~8x the fp32 rate, and a 10-bit mantissa is plenty for training a
  // toy model (parameters and optimizer state stay fp32).
  const CudaMathScope math_scope(ctx.device, true, cfg.sdpa_backend);

  model::Qwen3Model model = [&] {
    if (!cfg.model_dir.empty()) return model::load_qwen3(cfg.model_dir, ctx.device, ctx.dtype);
    model::Qwen3Model m(toy_model_config(cfg));
    m.init_random(static_cast<uint64_t>(cfg.seed), cfg.init_std);
    m.to(ctx.device, ctx.dtype);
    return m;
  }();
  const NamedParams params = model.named_parameters();
  for (const auto& [n, p] : params) p.requires_grad_(true);
  torch::optim::AdamW optimizer = make_optimizer(params, cfg);
  int64_t n_params = 0;
  for (const auto& [n, p] : params) n_params += p.numel();

  TrainResult result;
  int64_t step = 0, cursor = 0;
  const std::string log_path = cfg.out_dir + "/log.jsonl";
  // Created only once the model is there: a run that fails to load leaves no empty out_dir behind.
  make_directories(cfg.out_dir);
  if (!cfg.resume) check_fresh_start(cfg.out_dir, cfg.out_dir + "/model/train_recipe.yaml");
  if (cfg.resume) {
    if (auto dir = latest_checkpoint(cfg.out_dir)) {
      CheckpointState st = load_checkpoint(*dir, params, optimizer);
      check_resume_config(*dir, st.config, cfg);
      step = st.step;
      cursor = st.data_cursor;
      std::cerr << "resumed from " << *dir << " at step " << step << "\n";
    } else {
      std::cerr << "--resume: no checkpoint in '" << cfg.out_dir << "/checkpoints', starting from step 0\n";
    }
  }
  start_step_log(log_path, step);
  std::ofstream log(log_path, std::ios::app);
  result.first_step = step;

  std::cerr << "pretrain: " << n_params << " parameters (" << model.config().num_hidden_layers << " layers, hidden "
            << model.config().hidden_size << ", " << model.config().num_attention_heads << "/"
            << model.config().num_key_value_heads << " heads x " << model.config().head_dim << "), device "
            << ctx.device << ", dtype " << dtype_name(ctx.dtype) << "; " << task.describe() << "; seq_len "
            << cfg.seq_len << " x batch " << cfg.batch_size << ", " << cfg.steps << " steps\n";

  const std::vector<data::ToySample> eval_set =
      task.generate_many(cfg.seq_len, static_cast<uint64_t>(cfg.seed), kEvalStream, 0, cfg.eval_samples);
  auto evaluate = [&]() {
    const bool was_training = model.module().is_training();
    auto acc = data::toy_accuracy(model, eval_set, {}, std::max<int64_t>(1, std::min<int64_t>(cfg.batch_size, 16)));
    model.module().train(was_training);
    return acc;
  };
  auto checkpoint = [&](int64_t at_step) {
    CheckpointState st;
    st.step = at_step;
    st.data_cursor = cursor;
    st.seed = static_cast<uint64_t>(cfg.seed);
    st.config = cfg;
    const std::string dir = save_checkpoint(cfg.out_dir, params, optimizer, st, cfg.keep_checkpoints);
    std::cerr << "checkpoint " << dir << "\n";
  };

  std::vector<torch::Tensor> all_params;
  for (const auto& [n, p] : params) all_params.push_back(p);
  auto t_last = std::chrono::steady_clock::now();
  int64_t tokens_since = 0;
  double last_acc = -1;
  for (; step < cfg.steps; ++step) {
    if (cfg.stop_at_step > 0 && step >= cfg.stop_at_step) break;
    const int64_t T = seq_len_at_step(cfg, step);
    const auto samples =
        task.generate_many(T, static_cast<uint64_t>(cfg.seed), kTrainStream, static_cast<uint64_t>(cursor), cfg.batch_size);
    cursor += cfg.batch_size;
    const data::ToyBatch batch = data::make_batch(samples, cfg.answer_loss_weight);

    const double lr = lr_at_step(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    optimizer.zero_grad();
    torch::Tensor logits, loss;
    {
      const AutocastScope amp(ctx.device, cfg.autocast == "bfloat16");
      logits = model.forward(batch.input_ids.to(ctx.device));
      loss = data::weighted_lm_loss(logits.to(torch::kFloat32), batch);
    }
    loss.backward();
    double grad_norm = -1;
    if (cfg.grad_clip > 0) grad_norm = torch::nn::utils::clip_grad_norm_(all_params, cfg.grad_clip);
    optimizer.step();
    const double loss_v = loss.item<double>();
    RTP_CHECK(std::isfinite(loss_v), "pretrain: loss is ", loss_v, " at step ", step,
              " (lower lr, raise warmup_steps or check grad_clip)");
    result.losses.push_back(loss_v);
    tokens_since += cfg.batch_size * T;

    const int64_t done = step + 1;
    nlohmann::json line = {{"step", done}, {"loss", loss_v}, {"lr", lr}, {"seq_len", T}};
    if (grad_norm >= 0) line["grad_norm"] = grad_norm;
    const bool do_eval = (cfg.eval_every > 0 && done % cfg.eval_every == 0) || done == cfg.steps;
    if (do_eval) {
      const auto acc = evaluate();
      last_acc = acc.accuracy();
      line["toy_accuracy"] = acc.accuracy();
      line["toy_token_accuracy"] = acc.token_accuracy();
    }
    log << line.dump() << "\n" << std::flush;

    if (done % cfg.log_every == 0 || done == cfg.steps || do_eval) {
      torch::NoGradGuard ng;
      // The answer tokens' own cross-entropy: the number that says whether retrieval is being learned.
      const auto V = logits.size(-1);
      const auto flat_logits = logits.detach().reshape({-1, V});
      const auto flat_targets = batch.targets.to(logits.device()).reshape({-1});
      auto masked_ce = [&](const torch::Tensor& mask) {
        const auto m = mask.to(logits.device()).reshape({-1});
        return torch::nn::functional::cross_entropy(flat_logits.index({m}), flat_targets.index({m}));
      };
      const auto ce = masked_ce(batch.answer_mask);
      // Span copies: the induction circuit's own signal, which answering queries builds on.
      const bool has_copies = batch.copy_mask.any().item<bool>();
      const double copy_ce = has_copies ? masked_ce(batch.copy_mask).item<double>() : -1;
      const auto now = std::chrono::steady_clock::now();
      const double secs = std::chrono::duration<double>(now - t_last).count();
      std::string msg = str_cat("step ", done, "/", cfg.steps, "  loss ", fmt("%.4f", loss_v), "  answer_ce ",
                                fmt("%.4f", ce.item<double>()), "  lr ", fmt("%.3e", lr), "  len ", T, "  tok/s ",
                                fmt("%.0f", static_cast<double>(tokens_since) / std::max(secs, 1e-9)));
      if (has_copies) msg += str_cat("  copy_ce ", fmt("%.4f", copy_ce));
      if (grad_norm >= 0) msg += str_cat("  gnorm ", fmt("%.3f", grad_norm));
      if (do_eval) msg += str_cat("  toy_acc ", fmt("%.4f", last_acc));
      std::cerr << msg << "\n";
      t_last = now;
      tokens_since = 0;
    }
    const bool stopping = cfg.stop_at_step > 0 && done >= cfg.stop_at_step && done < cfg.steps;
    // The last step's checkpoint too, whatever save_every: a finished run can be extended (--resume --steps M),
    // and a stopped one continued.
    if ((cfg.save_every > 0 && done % cfg.save_every == 0) || done == cfg.steps || stopping) checkpoint(done);
  }
  result.steps_done = step;
  if (step < cfg.steps) {
    std::cerr << "stopped at step " << step << " (stop_at_step); continue with --resume\n";
    return result;
  }
  if (result.losses.empty() || last_acc < 0) last_acc = evaluate().accuracy();
  result.final_accuracy = last_acc;
  result.model_dir = cfg.out_dir + "/model";
  make_directories(result.model_dir);
  model::save_qwen3(model, result.model_dir, parse_dtype(cfg.save_dtype));
  // What the model was trained on, so that head identification and evaluation can regenerate the task.
  nlohmann::json task_json = nlohmann::json::object();
  for (const auto& f : train_config_registry().fields())
    if (f.group == "data" || f.name == "seed") task_json[f.name] = f.get(cfg);
  write_json_atomic(result.model_dir + "/rtpurbo_toy_task.json",
                    {{"format", "rtpurbo-toy-task"}, {"version", 1}, {"train_config", task_json},
                     {"final_toy_accuracy", last_acc}, {"steps", cfg.steps}});
  write_file_atomic(result.model_dir + "/train_recipe.yaml", dump_config(cfg));
  std::cerr << "final toy exact-match accuracy " << fmt("%.4f", last_acc) << "; model saved to " << result.model_dir
            << " (" << cfg.save_dtype << ")\n";
  return result;
}

}  // namespace rtp::train
