// rtpurbo-train --recipe R [--key value ...] [--dump-config] [--resume]
// Every TrainConfig field (rtp/train/recipe.h) is a flag of the same name (snake_case or kebab-case); flags
// override the recipe, which overrides the defaults.
#include <algorithm>
#include <cxxopts.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "main_guard.h"
#include "tool_args.h"
#include "torch_args.h"
#include "rtp/core/file_io.h"
#include <torch/torch.h>

#include "rtp/data/toy_task.h"
#include "rtp/torch/tensor_io.h"
#include "rtp/train/recipe.h"
#include "rtp/train/toy_data.h"
#include "rtp/train/stages.h"

namespace {

int run(int argc, char** argv) {
  const auto& reg = rtp::train::train_config_registry();
  // kebab-case -> snake_case for registry keys (cxxopts knows only the snake_case names).
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a.size() <= 2) continue;
    const size_t eq = a.find('=');
    const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (reg.find(name) && name.find('-') != std::string::npos)
      a = "--" + rtp::config::normalize_key(name) + (eq == std::string::npos ? "" : a.substr(eq));
  }
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());

  cxxopts::Options options("rtpurbo-train",
                           "Train: pretrain the toy model, or stage 1 (indexer) of RTPurbo.\n"
                           "Every config field below is also a recipe key; flags override the recipe.\n"
                           "Boolean fields are flags (--resume) or --key=false.");
  options.add_options()("recipe", "YAML recipe (keys are the fields below)", cxxopts::value<std::string>())(
      "dump-config", "print the merged config as YAML and exit")(
      "dump-data", "toy data: write the training batches of the first `steps` steps (input_ids, answer_mask, "
      "copy_mask) to this safetensors file and exit", cxxopts::value<std::string>())("h,help", "this help");
  for (const auto& f : reg.fields()) {
    const std::string help = rtp::str_cat(f.help, " [", f.expected(), "; default ",
                                          f.default_text.empty() ? "\"\"" : f.default_text, "]");
    auto value = cxxopts::value<std::string>();
    if (f.kind == rtp::config::Kind::Bool) value->implicit_value("true");
    options.add_option(f.group, "", {f.name}, help, value, f.kind == rtp::config::Kind::Bool ? "" : "V");
  }
  std::vector<std::string> groups = {""};
  for (const auto& f : reg.fields())
    if (std::find(groups.begin(), groups.end(), f.group) == groups.end()) groups.push_back(f.group);

  // No arguments at all is a question, not a request for the default 1000-step pretrain into runs/train.
  if (argc <= 1) {
    std::cerr << options.help(groups) << std::endl;
    return 2;
  }
  options.allow_unrecognised_options();
  const auto result = options.parse(static_cast<int>(cargv.size()), cargv.data());
  if (result.count("help")) {
    std::cout << options.help(groups) << std::endl;
    return 0;
  }
  // Unknown keys get "did you mean" over the config keys, in the snake_case the kebab-case flags were mapped to.
  std::vector<std::string> names = reg.names();
  for (const char* own : {"recipe", "dump-config", "dump-data", "help"}) names.push_back(own);
  rtp::tools::reject_unmatched(result, names);
  // Each flag's value alone first: a malformed number, a value out of range, not among the choices or not a device
  // is a mistake in the command line (exit 2, naming the flag). What only the merged config can tell (warmup_steps
  // above steps, a recipe key the flags contradict) stays the config's error (exit 1, naming recipe and command line).
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const auto& kv : result.arguments()) {
    if (!reg.find(kv.key())) continue;
    rtp::train::TrainConfig alone;
    try {
      reg.set(alone, kv.key(), kv.value(), "--" + kv.key());
    } catch (const rtp::Error& e) {
      throw rtp::tools::UsageError(e.what());
    }
    if (kv.key() == "device" && !rtp::tools::is_device_spelling(kv.value()))
      throw rtp::tools::UsageError("--device '" + kv.value() + "' is not valid: expected cpu, cuda, cuda:N or auto");
    overrides.emplace_back(kv.key(), kv.value());
  }
  const std::string recipe = result.count("recipe") ? result["recipe"].as<std::string>() : "";
  const rtp::train::TrainConfig cfg = rtp::train::load_train_config(recipe, overrides);
  if (const auto unread = rtp::train::unread_settings(cfg); !unread.empty()) {
    std::string list;
    for (const auto& k : unread) list += (list.empty() ? "" : ", ") + k + "=" + reg.find(k)->get(cfg);
    std::cerr << "rtpurbo-train: warning: stage '" << cfg.stage << "' with data '" << cfg.data
              << "' does not read these settings, which differ from their defaults: " << list
              << " (they change nothing in this run; rtpurbo-identify-heads reads kv_budget and retrieval_fraction "
                 "from the same recipe)\n";
  }
  if (result.count("dump-config")) {
    std::cout << rtp::train::dump_config(cfg);
    return 0;
  }
  if (result.count("dump-data")) {
    // Exactly the sequences the pretrain stage trains on (same task, seed, stream and cursor), for inspection or
    // for training another implementation on the same data.
    RTP_CHECK(cfg.data == "toy", "--dump-data writes toy-task batches; data is '", cfg.data, "'");
    rtp::require_output_directory_for(result["dump-data"].as<std::string>(), "--dump-data");
    const rtp::data::ToyTask task(rtp::train::toy_task_config(cfg));
    std::vector<torch::Tensor> ids, answers, copies;
    for (int64_t step = 0; step < cfg.steps; ++step) {
      const int64_t T = rtp::train::seq_len_at_step(cfg, step);
      RTP_CHECK(T == cfg.seq_len, "--dump-data needs one sequence length: set curriculum_start_len 0");
      const auto samples = task.generate_many(T, static_cast<uint64_t>(cfg.seed), rtp::train::kTrainStream,
                                              static_cast<uint64_t>(step * cfg.batch_size), cfg.batch_size);
      const auto batch = rtp::data::make_batch(samples, cfg.answer_loss_weight);
      ids.push_back(batch.input_ids);
      answers.push_back(batch.answer_mask.to(torch::kUInt8));
      copies.push_back(batch.copy_mask.to(torch::kUInt8));
    }
    const std::string path = result["dump-data"].as<std::string>();
    rtp::save_tensors(path, {{"input_ids", torch::cat(ids)}, {"answer_mask", torch::cat(answers)},
                             {"copy_mask", torch::cat(copies)}},
                      {{"batch_size", std::to_string(cfg.batch_size)}, {"steps", std::to_string(cfg.steps)}});
    std::cerr << "wrote " << cfg.steps << " batches of " << cfg.batch_size << " x " << cfg.seq_len << " to " << path
              << "\n";
    return 0;
  }
  rtp::RunContext ctx = rtp::train::make_run_context(cfg);
  rtp::train::run_stage(cfg, ctx);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-train", [&] { return run(argc, argv); });
}
