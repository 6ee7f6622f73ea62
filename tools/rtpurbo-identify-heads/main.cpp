// rtpurbo-identify-heads: score every attention head of a frozen model on copy/induction calibration sequences,
// choose the retrieval KV heads and write the head profile (HDF5) and its heatmap (SVG). DESIGN.md, "Heads" and
// "Identification"; the scores are defined in rtp/heads/head_scores.h, the file in rtp/heads/head_profile.h.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>

#include "main_guard.h"
#include "tool_args.h"
#include "torch_args.h"
#include "rtp/core/file_io.h"
#include "rtp/heads/calibration.h"
#include "rtp/heads/head_profile.h"
#include "rtp/heads/head_selection.h"
#include "rtp/heads/heatmap_svg.h"
#include "rtp/model/model_config.h"
#include "rtp/model/qwen3.h"
#include "rtp/text/tokenizer.h"
#include "rtp/text/utf8.h"
#include "rtp/torch/run_context.h"
#include "rtp/train/recipe.h"

namespace {

std::string svg_path_for(const std::string& h5) {
  const auto slash = h5.find_last_of('/');
  const auto dot = h5.find_last_of('.');
  if (dot != std::string::npos && (slash == std::string::npos || dot > slash)) return h5.substr(0, dot) + ".svg";
  return h5 + ".svg";
}

int64_t dtype_bytes(torch::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-identify-heads", [&]() -> int {
    cxxopts::Options opts("rtpurbo-identify-heads",
                          "Find the retrieval heads of a frozen model (copy/induction scores on calibration "
                          "sequences) and write a head profile (HDF5) with a heatmap (SVG).");
    // clang-format off
    opts.add_options()
      ("model", "model directory (Hugging Face layout)", cxxopts::value<std::string>())
      ("out", "head profile to write (HDF5)", cxxopts::value<std::string>())
      ("recipe", "YAML recipe (TrainConfig keys): model_dir, heads_file, seed, device, dtype, sink, window, "
                 "retrieval_fraction, kv_budget (fraction of the dense KV cache) are used; flags override",
       cxxopts::value<std::string>())
      ("retrieval-fraction", "keep this fraction of KV heads, in (0, 1] (default 0.15; rounded, at least 1 head)",
       cxxopts::value<std::string>())
      ("kv-budget", "instead: BYTES the retrieval KV heads' full caches may use, with an optional unit K, M, G, T "
       "(e.g. 2G, 512MiB); not a fraction (the recipe key kv_budget is the fraction of the dense KV cache)",
       cxxopts::value<std::string>())
      ("budget-context", "with --kv-budget: tokens per retrieval head the budget accounts for (default: "
       "max_position_embeddings)",
       cxxopts::value<std::string>())
      ("per-query-head", "select query heads instead of KV heads (studies; the implied KV heads are reported)")
      ("aggregation", "query heads -> KV head: max or mean", cxxopts::value<std::string>()->default_value("max"))
      ("calibration", "toy (random tokens) or text (default: text when --text or --tokenizer is given or the model "
                      "has tokenizer.json, else toy)",
       cxxopts::value<std::string>())
      ("text", "text calibration: a UTF-8 text file (default: a built-in paragraph)", cxxopts::value<std::string>())
      ("tokenizer", "text calibration: tokenizer.json or its directory (default: the model's)",
       cxxopts::value<std::string>())
      ("num-sequences", "calibration sequences", cxxopts::value<std::string>()->default_value("8"))
      ("seq-len", "tokens per sequence (default: min(max_position_embeddings, 1024))", cxxopts::value<std::string>())
      ("span-len", "tokens of the repeated span (default: clamp(seq_len / 8, 8, 256))", cxxopts::value<std::string>())
      ("window", "long-range threshold: keys at distance >= window (default: the recipe's window, else "
       "min(seq_len / 4, 8192))", cxxopts::value<std::string>())
      ("sink", "first tokens a streaming head keeps (not long-range; default 4)", cxxopts::value<std::string>())
      ("batch-size", "sequences per forward", cxxopts::value<std::string>()->default_value("1"))
      ("chunk-rows", "query rows per probability block", cxxopts::value<std::string>()->default_value("128"))
      ("seed", "random seed (default 1234)", cxxopts::value<std::string>())
      ("device", "cpu, cuda, cuda:N or auto (default cpu)", cxxopts::value<std::string>())
      ("dtype", "float32, bfloat16 or float16 (default float32)", cxxopts::value<std::string>())
      ("svg", "heatmap to write (default: the .h5 path with .svg)", cxxopts::value<std::string>())
      ("top", "rows in the final table", cxxopts::value<std::string>()->default_value("12"))
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }

    // Defaults, then the recipe, then flags.
    std::string model_dir, out_path, recipe_device = "cpu", recipe_dtype = "float32";
    uint64_t seed = 1234;
    int64_t sink = 4, recipe_window = 0;
    double fraction = 0.15, budget_fraction = 0;
    if (args.count("recipe")) {
      auto rc = rtp::train::load_train_config(args["recipe"].as<std::string>());
      model_dir = rc.model_dir;
      out_path = rc.heads_file;
      seed = static_cast<uint64_t>(rc.seed);
      recipe_device = rc.device;
      recipe_dtype = rc.dtype;
      sink = rc.sink;
      recipe_window = rc.window;
      fraction = rc.retrieval_fraction;
      budget_fraction = rc.kv_budget;
    }
    // Every flag is read and checked here, before the model loads and the calibration pass runs (minutes on a
    // large model): a mistake in one used to surface only after it.
    using rtp::config::at_least;
    using rtp::config::range;
    namespace ta = rtp::tools;
    if (args.count("model")) model_dir = args["model"].as<std::string>();
    if (args.count("out")) out_path = args["out"].as<std::string>();
    if (args.count("seed")) seed = static_cast<uint64_t>(ta::integer_arg(args, "seed", at_least(0)));
    // A flag's device or dtype that the library does not know is a usage error; the recipe's is the file's error.
    const torch::Device device = args.count("device") ? ta::device_arg(args["device"].as<std::string>())
                                                      : rtp::parse_device(recipe_device);
    const torch::ScalarType dtype = args.count("dtype") ? ta::dtype_arg(args["dtype"].as<std::string>())
                                                        : rtp::parse_dtype(recipe_dtype);
    if (args.count("sink")) sink = ta::integer_arg(args, "sink", at_least(0));
    const auto flag_window = ta::optional_integer_arg(args, "window", at_least(1));
    const auto flag_fraction = ta::optional_number_arg(args, "retrieval-fraction", range(0, 1, "(]"));
    const auto flag_seq_len = ta::optional_integer_arg(args, "seq-len", at_least(2));
    const auto flag_span_len = ta::optional_integer_arg(args, "span-len", at_least(1));
    const auto flag_budget_context = ta::optional_integer_arg(args, "budget-context", at_least(1));
    const int64_t num_sequences = ta::integer_arg(args, "num-sequences", at_least(1));
    const int64_t batch_size = ta::integer_arg(args, "batch-size", at_least(1));
    const int64_t chunk_rows = ta::integer_arg(args, "chunk-rows", at_least(1));
    const int64_t top_rows = ta::integer_arg(args, "top", at_least(0));
    const std::string aggregation_text = ta::choice_arg(args, "aggregation", {"max", "mean"});
    // --text or --tokenizer asks for text calibration; with --calibration toy they would be ignored.
    const bool text_flags = args.count("text") || args.count("tokenizer");
    const std::string calibration_flag = args.count("calibration") ? ta::choice_arg(args, "calibration", {"toy", "text"})
                                         : text_flags ? "text" : "";
    if (calibration_flag == "toy" && text_flags)
      throw ta::UsageError(std::string(args.count("text") ? "--text" : "--tokenizer") +
                           " is read by text calibration only, and --calibration is toy");
    int64_t flag_budget_bytes = 0;
    if (args.count("kv-budget")) {
      const std::string text = args["kv-budget"].as<std::string>();
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      // The recipe key kv_budget is a fraction of the dense KV cache; this flag is bytes.
      if (end == text.c_str() + text.size() && v > 0 && v < 1)
        throw ta::UsageError("--kv-budget '" + text + "' is a number of bytes (e.g. 2G, 512MiB), and " + text +
                             " looks like a fraction: for a fraction of the dense KV cache use kv_budget in a "
                             "--recipe, or --retrieval-fraction for a fraction of the KV heads");
      try {
        flag_budget_bytes = rtp::heads::parse_byte_size(text);
      } catch (const rtp::Error& e) {
        throw ta::UsageError(std::string("--kv-budget: ") + e.what());
      }
    }
    if (model_dir.empty()) throw ta::UsageError("--model is required (or model_dir in the recipe)");
    if (out_path.empty()) throw ta::UsageError("--out is required (or heads_file in the recipe)");
    if (flag_fraction && args.count("kv-budget"))
      throw ta::UsageError("--retrieval-fraction and --kv-budget exclude each other");
    // A fraction of heads (flag or recipe, kv_budget included) selects the same heads whatever the context: ignored
    // there, the flag would look as if it had sized the selection.
    if (flag_budget_context && !args.count("kv-budget"))
      throw ta::UsageError("--budget-context is read with --kv-budget only (the tokens each retrieval head's cache "
                           "holds in the byte budget); a fraction of the KV heads does not depend on it");
    // A fraction of 0 would still select one head (the rule keeps at least one): refuse it, as the flag does.
    RTP_CHECK(flag_fraction || args.count("kv-budget") || budget_fraction > 0 || fraction > 0,
              "retrieval_fraction 0 in the recipe selects no head (give retrieval_fraction > 0, or kv_budget)");
    rtp::require_directory(model_dir, "--model", "(expected a Hugging Face checkpoint directory)");
    if (args.count("text")) rtp::require_input_file(args["text"].as<std::string>(), "--text", "a UTF-8 text file");
    const std::string svg = args.count("svg") ? args["svg"].as<std::string>() : svg_path_for(out_path);
    // The picture written over the profile would leave an exit status of 0 and no profile.
    if (!out_path.empty() && !svg.empty() &&
        std::filesystem::weakly_canonical(std::filesystem::absolute(svg)) ==
            std::filesystem::weakly_canonical(std::filesystem::absolute(out_path)))
      throw ta::UsageError("--svg '" + svg + "' is the --out file" +
                           (args.count("svg") ? "" : " (the default picture of an --out ending in .svg)") +
                           std::string(": give the profile a .h5 name, or --svg another path"));
    // Like the other tools' output directories: create what is missing (HDF5 would only say it cannot create the
    // file), and find out now whether the files can be written there.
    for (const auto& [f, flag] : {std::pair<std::string, const char*>{out_path, "--out"}, {svg, "--svg"}}) {
      const auto slash = f.find_last_of('/');
      if (slash != std::string::npos && slash > 0) {
        try {
          rtp::make_directories(f.substr(0, slash));
        } catch (const rtp::Error& e) {
          RTP_THROW(flag, " '", f, "': ", e.what());
        }
      }
      rtp::require_output_directory_for(f, flag);
    }

    rtp::RunContext ctx;
    ctx.seed = seed;
    ctx.device = device;
    ctx.dtype = dtype;
    auto model = rtp::model::load_qwen3(model_dir, ctx.device, ctx.dtype);
    const auto& cfg = model.config();
    const int64_t Lyr = cfg.num_hidden_layers, Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;

    // Calibration data.
    const bool has_tokenizer = rtp::file_exists(model_dir + "/tokenizer.json");
    rtp::heads::CalibrationSpec spec;
    spec.source = !calibration_flag.empty() ? calibration_flag : (has_tokenizer ? "text" : "toy");
    std::string text_source;
    if (spec.source == "text") {
      const std::string tok_path = args.count("tokenizer") ? args["tokenizer"].as<std::string>() : model_dir;
      auto tok = rtp::text::Tokenizer::from_file(tok_path);
      text_source = args.count("text") ? args["text"].as<std::string>() : "builtin";
      const std::string text = args.count("text") ? rtp::read_text_file(text_source)
                                                   : rtp::heads::builtin_calibration_text();
      rtp::text::utf8_check(text, "--text '" + text_source + "'");  // the file and the offset in it
      spec.text_tokens = tok.encode(text, /*allow_special=*/false);
      RTP_CHECK(!spec.text_tokens.empty(), "calibration text '", text_source, "' has no tokens");
      for (auto t : spec.text_tokens)
        RTP_CHECK(t >= 0 && t < cfg.vocab_size, "token id ", t, " of the calibration text is outside the model's ",
                  "vocabulary of ", cfg.vocab_size, " (wrong --tokenizer?)");
    }
    spec.vocab_size = cfg.vocab_size;
    spec.num_sequences = num_sequences;
    spec.seq_len = flag_seq_len ? *flag_seq_len : std::min<int64_t>(cfg.max_position_embeddings, 1024);
    spec.span_len = flag_span_len ? *flag_span_len : std::clamp<int64_t>(spec.seq_len / 8, 8, 256);
    spec.seed = seed;
    rtp::model::check_fits_positions(cfg, spec.seq_len, "--seq-len");
    if (spec.source == "text" && static_cast<int64_t>(spec.text_tokens.size()) < spec.seq_len)
      std::cerr << "note: calibration text has " << spec.text_tokens.size() << " tokens < seq_len " << spec.seq_len
                << ": it repeats within each sequence, which spreads copy attention over the repeats\n";

    rtp::heads::ScoreOptions so;
    so.window = flag_window ? *flag_window
                : (recipe_window > 0 && recipe_window < spec.seq_len)
                    ? recipe_window
                    : std::max<int64_t>(1, std::min<int64_t>(spec.seq_len / 4, 8192));
    so.sink = sink;
    so.chunk_rows = chunk_rows;
    auto sequences = rtp::heads::make_calibration_sequences(spec);
    int64_t near = 0;
    for (const auto& s : sequences)
      if (s.layout.second - s.layout.first < so.window) ++near;
    if (near)
      std::cerr << "note: in " << near << " sequences the copies are closer than the window (" << so.window
                << "): their retrieval is not long-range\n";

    std::cerr << "rtpurbo-identify-heads: model " << model_dir << " (" << Lyr << " layers, " << Hq << " query heads, "
              << Hkv << " KV heads, head_dim " << cfg.head_dim << "), " << rtp::dtype_name(ctx.dtype) << " on "
              << ctx.device << "\n"
              << "calibration " << spec.source << (text_source.empty() ? "" : " (" + text_source + ")") << ": "
              << spec.num_sequences << " sequences x " << spec.seq_len << " tokens, span " << spec.span_len
              << ", window " << so.window << ", sink " << so.sink << ", seed " << seed << "\n";

    // The selection rule, checked before the calibration pass.
    rtp::heads::SelectionRule rule;
    rule.aggregation = rtp::heads::parse_aggregation(aggregation_text);
    rule.per_query_head = args.count("per-query-head") > 0;
    rule.head_dim = cfg.head_dim;
    rule.bytes_per_element = dtype_bytes(ctx.dtype);
    rule.budget_context = flag_budget_context ? *flag_budget_context
                                              : std::max<int64_t>(cfg.max_position_embeddings, spec.seq_len);
    if (args.count("kv-budget")) {
      rule.kind = rtp::heads::SelectionRule::Kind::kBudget;
      rule.budget_bytes = flag_budget_bytes;
      RTP_CHECK(rule.budget_bytes >= rule.bytes_per_kv_head(), "--kv-budget '", args["kv-budget"].as<std::string>(),
                "' (", rule.budget_bytes, " bytes) holds no retrieval KV head: one costs ", rule.bytes_per_kv_head(),
                " bytes (", rule.budget_context, " tokens x 2 (K and V) x head_dim ", rule.head_dim, " x ",
                rule.bytes_per_element, " bytes)");
    } else if (flag_fraction) {
      rule.fraction = *flag_fraction;
    } else if (budget_fraction > 0) {  // recipe kv_budget: a fraction of the dense (all heads full) KV cache
      rule.kind = rtp::heads::SelectionRule::Kind::kBudget;
      rule.budget_bytes = static_cast<int64_t>(budget_fraction * static_cast<double>(Lyr * Hkv) *
                                               static_cast<double>(rule.bytes_per_kv_head()));
    } else {
      rule.fraction = fraction;
    }
    auto scores = rtp::heads::score_model_heads(
        model, sequences, so, batch_size,
        [](int64_t done, int64_t total) { std::cerr << "sequence " << done << "/" << total << "\n"; });

    auto sel = rtp::heads::select_heads(scores.retrieval, scores.long_range, Lyr, Hq, Hkv, rule);

    rtp::heads::HeadProfile p;
    p.num_layers = Lyr;
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.retrieval = scores.retrieval;
    p.long_range = scores.long_range;
    p.copy = scores.copy;
    p.induction = scores.induction;
    p.kv_retrieval = sel.kv_retrieval;
    p.kv_long_range = sel.kv_long_range;
    p.selected_kv = sel.selected_kv;
    p.selected_q = sel.selected_q;
    auto& s = p.settings;
    s.model_dir = model_dir;
    s.calibration = spec.source;
    s.text_source = text_source;
    s.num_sequences = spec.num_sequences;
    s.seq_len = spec.seq_len;
    s.span_len = spec.span_len;
    s.window = so.window;
    s.sink = so.sink;
    s.seed = seed;
    const bool budget = rule.kind == rtp::heads::SelectionRule::Kind::kBudget;
    s.selection_rule = budget ? "kv_budget" : "fraction";
    s.selection_value = budget ? static_cast<double>(rule.budget_bytes) : rule.fraction;
    s.budget_context = budget ? rule.budget_context : 0;
    s.aggregation = rtp::heads::aggregation_name(rule.aggregation);
    s.per_query_head = rule.per_query_head;
    s.dtype = rtp::dtype_name(ctx.dtype);
    rtp::heads::save_head_profile(p, out_path);
    rtp::heads::write_heatmap_svg(p, svg);

    // Report: per-layer summary (stderr), then the top heads (stdout).
    for (int64_t l = 0; l < Lyr; ++l) {
      int64_t best = 0;
      double mean = 0, lr = 0;
      for (int64_t h = 0; h < Hq; ++h) {
        if (scores.at(scores.retrieval, l, h) > scores.at(scores.retrieval, l, best)) best = h;
        mean += scores.at(scores.retrieval, l, h) / Hq;
        lr += scores.at(scores.long_range, l, h) / Hq;
      }
      char buf[160];
      std::snprintf(buf, sizeof buf, "layer %3lld: retrieval max %.3f (q head %lld), mean %.3f; long-range mean %.3f",
                    static_cast<long long>(l), scores.at(scores.retrieval, l, best), static_cast<long long>(best),
                    mean, lr);
      std::cerr << buf << "\n";
    }
    const int64_t G = Hq / Hkv;
    auto order = rtp::heads::rank_heads(scores.retrieval, scores.long_range);
    const int64_t top = std::min<int64_t>(top_rows, static_cast<int64_t>(order.size()));
    std::printf("%4s %5s %6s %7s %9s %6s %9s %10s %8s\n", "rank", "layer", "q_head", "kv_head", "retrieval", "copy",
                "induction", "long_range", "selected");
    for (int64_t i = 0; i < top; ++i) {
      const int64_t u = order[i], l = u / Hq, h = u % Hq;
      std::printf("%4lld %5lld %6lld %7lld %9.4f %6.4f %9.4f %10.4f %8s\n", static_cast<long long>(i + 1),
                  static_cast<long long>(l), static_cast<long long>(h), static_cast<long long>(h / G),
                  scores.retrieval[u], scores.copy[u], scores.induction[u], scores.long_range[u],
                  sel.selected_q[u] ? "yes" : "");
    }
    std::printf("selected %lld of %lld KV heads (%.1f%%), %lld of %lld query heads; rule: %s\n",
                static_cast<long long>(sel.count_kv()), static_cast<long long>(Lyr * Hkv),
                100.0 * sel.count_kv() / (Lyr * Hkv), static_cast<long long>(sel.count_q()),
                static_cast<long long>(Lyr * Hq), rule.describe().c_str());
    std::printf("retrieval KV heads (layer:kv):");
    for (int64_t l = 0; l < Lyr; ++l)
      for (int64_t g = 0; g < Hkv; ++g)
        if (sel.selected_kv[l * Hkv + g]) std::printf(" %lld:%lld", static_cast<long long>(l), static_cast<long long>(g));
    std::printf("\n");
    std::fflush(stdout);
    std::cerr << "wrote " << out_path << " and " << svg << " (seed " << seed << ")\n";
    return 0;
  });
}
