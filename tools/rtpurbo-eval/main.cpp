// rtpurbo-eval: evaluate a model (dense or converted) on a task.
#include <cxxopts.hpp>
#include <iostream>

#include "main_guard.h"
#include "rtp/eval/logits_task.h"
#include "rtp/torch/run_context.h"

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-eval", [&]() -> int {
    cxxopts::Options opts("rtpurbo-eval", "Evaluate a Qwen3 / converted RTPurbo model on a task.");
    // clang-format off
    opts.add_options()
      ("task", "task: logits", cxxopts::value<std::string>()->default_value("logits"))
      ("model", "model directory (Hugging Face layout or converted)", cxxopts::value<std::string>())
      ("input", "logits: safetensors with int64 input_ids [B, T]", cxxopts::value<std::string>())
      ("out", "logits: output safetensors (float32 logits [B, T, V])", cxxopts::value<std::string>())
      ("device", "cpu, cuda, cuda:N or auto", cxxopts::value<std::string>()->default_value("cpu"))
      ("dtype", "float32, bfloat16 or float16", cxxopts::value<std::string>()->default_value("float32"))
      ("seed", "random seed", cxxopts::value<uint64_t>()->default_value("1234"))
      ("h,help", "print this help");
    // clang-format on
    auto args = opts.parse(argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    rtp::RunContext ctx;
    ctx.seed = args["seed"].as<uint64_t>();
    ctx.device = rtp::parse_device(args["device"].as<std::string>());
    ctx.dtype = rtp::parse_dtype(args["dtype"].as<std::string>());
    const std::string task = args["task"].as<std::string>();
    auto need = [&](const char* key) {
      if (!args.count(key)) throw rtp::Error(std::string("--task ") + task + " needs --" + key);
      return args[key].as<std::string>();
    };
    if (task == "logits") {
      rtp::eval::LogitsTaskOptions o;
      o.model_dir = need("model");
      o.input_path = need("input");
      o.output_path = need("out");
      rtp::eval::run_logits_task(o, ctx);
      std::cerr << "wrote " << o.output_path << "\n";
      return 0;
    }
    throw rtp::Error("unknown --task '" + task + "': expected one of logits");
  });
}
