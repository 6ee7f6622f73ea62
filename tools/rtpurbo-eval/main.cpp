// rtpurbo-eval: evaluate a model (dense or converted) on a task.
#include <algorithm>
#include <cxxopts.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "main_guard.h"
#include "tool_args.h"
#include "torch_args.h"
#include "rtp/core/file_io.h"
#include "rtp/eval/logits_task.h"
#include "rtp/eval/ruler_eval.h"
#include "rtp/eval/toy_eval.h"
#include "rtp/text/ruler.h"
#include "rtp/torch/run_context.h"

namespace {

// --lengths with every length once: a repeated length would be evaluated twice and, for RULER, refused only when
// the results are written.
std::vector<int64_t> distinct_lengths(const std::string& text) {
  auto lengths = rtp::tools::positive_integer_list("lengths", text);
  for (size_t i = 0; i < lengths.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (lengths[i] == lengths[j])
        throw rtp::tools::UsageError(rtp::str_cat("--lengths '", text, "' lists ", lengths[i],
                                                  " twice: expected each length once"));
  return lengths;
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-eval", [&]() -> int {
    cxxopts::Options opts("rtpurbo-eval", "Evaluate a Qwen3 / converted RTPurbo model on a task.");
    // clang-format off
    opts.add_options()
      ("task", "task: logits, toy or ruler", cxxopts::value<std::string>()->default_value("logits"))
      ("model", "model directory (Hugging Face layout or converted)", cxxopts::value<std::string>())
      ("input", "logits: safetensors with int64 input_ids [B, T]", cxxopts::value<std::string>())
      ("out", "logits: output safetensors (float32 logits [B, T, V])", cxxopts::value<std::string>())
      ("samples", "toy and ruler: sequences per length", cxxopts::value<std::string>()->default_value("16"))
      ("seq-len", "toy: one sequence length (default: the task's training length)", cxxopts::value<std::string>())
      ("lengths", "toy: comma-separated sequence lengths (accuracy against length); ruler: prompt lengths in tokens, "
       "answer included (required)", cxxopts::value<std::string>())
      ("out-dir", "where eval.json / ruler.json and report.html go (default: runs/eval-toy, runs/eval-ruler)",
       cxxopts::value<std::string>())
      ("random-heads-indexer", "toy: indexer checkpoint trained on random heads (same count and budget)",
       cxxopts::value<std::string>())
      ("batch-size", "toy: sequences per forward", cxxopts::value<std::string>()->default_value("4"))
      ("no-recall", "toy: skip measuring indexer recall (faster)")
      ("token-recall-top-p", "toy: top-p of the indexer's token-level recall (no block pooling) at the longest "
       "length; 0: skip", cxxopts::value<std::string>()->default_value("0.9"))
      ("device", "cpu, cuda, cuda:N or auto", cxxopts::value<std::string>()->default_value("cpu"))
      ("dtype", "float32, bfloat16 or float16", cxxopts::value<std::string>()->default_value("float32"))
      ("seed", "random seed", cxxopts::value<std::string>()->default_value("1234"))
      ("tasks", "ruler: comma-separated tasks, e.g. ruler:niah_single_1,ruler:vt", cxxopts::value<std::string>())
      ("tokenizer", "ruler: tokenizer.json or its directory (default: the model's)", cxxopts::value<std::string>())
      ("essay", "ruler: plain-text haystack for the essay tasks", cxxopts::value<std::string>())
      ("dense", "ruler: evaluate the dense model (alone unless --sparse is given too)")
      ("sparse", "ruler: evaluate the sparse model (alone unless --dense is given too)")
      ("both", "ruler: dense and sparse (the default)")
      ("dump-prompts", "ruler: write the prompts and answers as JSONL here", cxxopts::value<std::string>())
      ("prefill-chunk", "ruler: prefill prompts in chunks of N tokens, dense and sparse (sparse: a multiple of the "
       "block size; 0: one forward)", cxxopts::value<std::string>()->default_value("4096"))
      ("no-cuda-graphs", "ruler: decode eagerly instead of replaying CUDA graphs of each layer (slower; for comparison)")
      ("resume", "toy and ruler: continue the unfinished evaluation in --out-dir (toy: eval.progress.json, written "
       "after every pass; ruler: ruler.json, written after every sample; the settings must be the same)")
      ("stop-after", "toy: stop after N passes run by this invocation (a pass: dense, sparse or random heads at one "
       "length); ruler: after N samples; the rest is left for --resume (0: no limit)",
       cxxopts::value<std::string>()->default_value("0"))
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    using rtp::config::at_least;
    using rtp::config::range;
    // Every number is read (and range-checked) here, before any model loads.
    const int64_t samples = rtp::tools::integer_arg(args, "samples", at_least(1));
    const auto seq_len = rtp::tools::optional_integer_arg(args, "seq-len", at_least(1));
    const int64_t batch_size = rtp::tools::integer_arg(args, "batch-size", at_least(1));
    const double token_recall_top_p = rtp::tools::number_arg(args, "token-recall-top-p", range(0, 1));
    const int64_t prefill_chunk = rtp::tools::integer_arg(args, "prefill-chunk", at_least(0));
    const int64_t stop_after = rtp::tools::integer_arg(args, "stop-after", at_least(0));
    rtp::RunContext ctx;
    ctx.seed = static_cast<uint64_t>(rtp::tools::integer_arg(args, "seed", at_least(0)));
    ctx.device = rtp::tools::device_arg(args["device"].as<std::string>());
    ctx.dtype = rtp::tools::dtype_arg(args["dtype"].as<std::string>());
    const std::string task = args["task"].as<std::string>();
    if (task != "logits" && task != "toy" && task != "ruler")
      throw rtp::tools::UsageError("unknown --task '" + task + "': expected one of logits, toy, ruler");
    // Which task reads which option (--model, --device, --dtype and --seed: all of them), as in the help above.
    const std::vector<std::string> logits{"logits"}, toy{"toy"}, ruler{"ruler"}, toy_ruler{"toy", "ruler"};
    rtp::tools::reject_options_of_other_modes(
        args, "task", task,
        {{"input", logits, ""},
         {"out", logits, "toy and ruler write eval.json / ruler.json and report.html into --out-dir"},
         {"out-dir", toy_ruler, "logits writes one file, given by --out"},
         {"samples", toy_ruler, ""},
         {"lengths", toy_ruler, "logits reads the lengths from --input"},
         {"seq-len", toy, "ruler takes --lengths"},
         {"random-heads-indexer", toy, ""},
         {"batch-size", toy, ""},
         {"no-recall", toy, ""},
         {"token-recall-top-p", toy, ""},
         {"tasks", ruler, ""},
         {"tokenizer", ruler, ""},
         {"essay", ruler, ""},
         {"dense", ruler, ""},
         {"sparse", ruler, ""},
         {"both", ruler, ""},
         {"dump-prompts", ruler, ""},
         {"prefill-chunk", ruler, ""},
         {"no-cuda-graphs", ruler, ""},
         {"resume", toy_ruler, ""},
         {"stop-after", toy_ruler, ""}});
    auto need = [&](const char* key) {
      if (!args.count(key)) throw rtp::tools::UsageError(std::string("--task ") + task + " needs --" + key);
      return args[key].as<std::string>();
    };
    if (task == "logits") {
      rtp::eval::LogitsTaskOptions o;
      o.model_dir = need("model");
      o.input_path = need("input");
      o.output_path = need("out");
      rtp::require_directory(o.model_dir, "--model");
      rtp::require_output_directory_for(o.output_path, "--out");
      rtp::eval::run_logits_task(o, ctx);
      std::cerr << "wrote " << o.output_path << "\n";
      return 0;
    }
    if (task == "toy") {
      rtp::eval::ToyEvalOptions o;
      o.model_dir = need("model");
      o.samples = samples;
      if (seq_len && args.count("lengths")) throw rtp::tools::UsageError("give --seq-len or --lengths, not both");
      if (seq_len) o.lengths = {*seq_len};
      if (args.count("lengths")) o.lengths = distinct_lengths(args["lengths"].as<std::string>());
      if (args.count("out-dir")) o.out_dir = args["out-dir"].as<std::string>();
      if (args.count("random-heads-indexer")) o.random_heads_indexer = args["random-heads-indexer"].as<std::string>();
      o.batch_size = batch_size;
      o.measure_recall = args.count("no-recall") == 0;
      if (!o.measure_recall && args.count("token-recall-top-p"))
        throw rtp::tools::UsageError("--token-recall-top-p is not read with --no-recall, which skips both recalls");
      o.token_recall_top_p = token_recall_top_p;
      o.resume = args.count("resume") > 0;
      o.stop_after_passes = stop_after;
      rtp::require_directory(o.model_dir, "--model");
      if (!o.random_heads_indexer.empty()) rtp::require_input_file(o.random_heads_indexer, "--random-heads-indexer");
      rtp::require_creatable_directory(o.out_dir, "--out-dir");
      rtp::eval::run_toy_eval(o, ctx);
      return 0;
    }
    if (task == "ruler") {
      rtp::eval::RulerEvalOptions o;
      if (args.count("model")) o.model_dir = args["model"].as<std::string>();
      if (args.count("tokenizer")) o.tokenizer = args["tokenizer"].as<std::string>();
      o.tasks = rtp::tools::flag_value("tasks", need("tasks"), rtp::eval::parse_ruler_tasks);
      o.lengths = distinct_lengths(need("lengths"));
      o.samples = samples;
      if (args.count("essay")) {
        // Only the essay-haystack tasks read it: with none of them the run would not be the one the user asked for.
        if (std::none_of(o.tasks.begin(), o.tasks.end(), rtp::text::ruler::task_needs_essay)) {
          std::string essay_tasks;
          for (const auto& t : rtp::text::ruler::task_names())
            if (rtp::text::ruler::task_needs_essay(t)) essay_tasks += (essay_tasks.empty() ? "ruler:" : ", ruler:") + t;
          throw rtp::tools::UsageError("--essay is read by the essay-haystack tasks only (" + essay_tasks +
                                       "), and --tasks has none of them");
        }
        o.essay_file = args["essay"].as<std::string>();
        rtp::require_input_file(o.essay_file, "--essay", "a plain-text file");
      }
      if (args.count("dump-prompts")) o.dump_prompts = args["dump-prompts"].as<std::string>();
      o.prefill_chunk = prefill_chunk;
      o.cuda_graphs = args.count("no-cuda-graphs") == 0;
      o.resume = args.count("resume") > 0;
      o.stop_after_samples = stop_after;
      if (args.count("out-dir")) o.out_dir = args["out-dir"].as<std::string>();
      if (!o.model_dir.empty()) {
        rtp::require_directory(o.model_dir, "--model");
        rtp::require_creatable_directory(o.out_dir, "--out-dir");
      }
      if (!o.dump_prompts.empty()) rtp::require_output_directory_for(o.dump_prompts, "--dump-prompts");
      // --dense and --sparse each select a model; neither (or --both) selects both.
      const bool d = args.count("dense") > 0, sp = args.count("sparse") > 0;
      o.dense = d || !sp || args.count("both");
      o.sparse = sp || !d || args.count("both");
      if (o.model_dir.empty() && o.dump_prompts.empty())
        throw rtp::tools::UsageError("--task ruler needs --model (to evaluate) or --dump-prompts (to write the prompts)");
      if (o.model_dir.empty()) {
        // Prompts only: what runs a model would be ignored.
        for (const char* flag : {"out-dir", "stop-after", "resume", "dense", "sparse", "both", "prefill-chunk", "dtype",
                                 "device", "no-cuda-graphs"})
          if (args.count(flag))
            throw rtp::tools::UsageError(std::string("--") + flag + " is read when a model is evaluated; without "
                                         "--model, --task ruler only writes the prompts to --dump-prompts");
      }
      rtp::eval::run_ruler_eval(o, ctx);
      return 0;
    }
    return 2;  // not reached: the task was checked above
  });
}
