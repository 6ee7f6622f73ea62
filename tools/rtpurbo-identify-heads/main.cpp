// rtpurbo-identify-heads: score every attention head of a frozen model on copy/induction calibration sequences,
// choose the retrieval KV heads and write the head profile (HDF5) and its heatmap (SVG). DESIGN.md, "Heads" and
// "Identification"; the scores are defined in rtp/heads/head_scores.h, the file in rtp/heads/head_profile.h.
#include <algorithm>
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>

#include "main_guard.h"
#include "rtp/core/file_io.h"
#include "rtp/heads/calibration.h"
#include "rtp/heads/head_profile.h"
#include "rtp/heads/head_selection.h"
#include "rtp/heads/heatmap_svg.h"
#include "rtp/model/qwen3.h"
#include "rtp/text/tokenizer.h"
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
      ("retrieval-fraction", "keep this fraction of KV heads (default 0.15, at least 1 head)", cxxopts::value<double>())
      ("kv-budget", "instead: bytes the retrieval KV heads' full caches may use (e.g. 2G, 512MiB)",
       cxxopts::value<std::string>())
      ("budget-context", "tokens per retrieval head the budget accounts for (default: max_position_embeddings)",
       cxxopts::value<int64_t>())
      ("per-query-head", "select query heads instead of KV heads (studies; the implied KV heads are reported)")
      ("aggregation", "query heads -> KV head: max or mean", cxxopts::value<std::string>()->default_value("max"))
      ("calibration", "toy (random tokens) or text (default: text when the model has tokenizer.json)",
       cxxopts::value<std::string>())
      ("text", "text calibration: a UTF-8 text file (default: a built-in paragraph)", cxxopts::value<std::string>())
      ("tokenizer", "text calibration: tokenizer.json or its directory (default: the model's)",
       cxxopts::value<std::string>())
      ("num-sequences", "calibration sequences", cxxopts::value<int64_t>()->default_value("8"))
      ("seq-len", "tokens per sequence (default: min(max_position_embeddings, 1024))", cxxopts::value<int64_t>())
      ("span-len", "tokens of the repeated span (default: clamp(seq_len / 8, 8, 256))", cxxopts::value<int64_t>())
      ("window", "long-range threshold: keys at distance >= window (default: min(seq_len / 4, 8192))",
       cxxopts::value<int64_t>())
      ("sink", "first tokens a streaming head keeps (not long-range)", cxxopts::value<int64_t>())
      ("batch-size", "sequences per forward", cxxopts::value<int64_t>()->default_value("1"))
      ("chunk-rows", "query rows per probability block", cxxopts::value<int64_t>()->default_value("128"))
      ("seed", "random seed (default 1234)", cxxopts::value<uint64_t>())
      ("device", "cpu, cuda, cuda:N or auto (default cpu)", cxxopts::value<std::string>())
      ("dtype", "float32, bfloat16 or float16 (default float32)", cxxopts::value<std::string>())
      ("svg", "heatmap to write (default: the .h5 path with .svg)", cxxopts::value<std::string>())
      ("top", "rows in the final table", cxxopts::value<int64_t>()->default_value("12"))
      ("h,help", "print this help");
    // clang-format on
    auto args = opts.parse(argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }

    // Defaults, then the recipe, then flags.
    std::string model_dir, out_path, device = "cpu", dtype = "float32";
    uint64_t seed = 1234;
    int64_t sink = 4, recipe_window = 0;
    double fraction = 0.15, budget_fraction = 0;
    if (args.count("recipe")) {
      auto rc = rtp::train::load_train_config(args["recipe"].as<std::string>());
      model_dir = rc.model_dir;
      out_path = rc.heads_file;
      seed = static_cast<uint64_t>(rc.seed);
      device = rc.device;
      dtype = rc.dtype;
      sink = rc.sink;
      recipe_window = rc.window;
      fraction = rc.retrieval_fraction;
      budget_fraction = rc.kv_budget;
    }
    if (args.count("model")) model_dir = args["model"].as<std::string>();
    if (args.count("out")) out_path = args["out"].as<std::string>();
    if (args.count("seed")) seed = args["seed"].as<uint64_t>();
    if (args.count("device")) device = args["device"].as<std::string>();
    if (args.count("dtype")) dtype = args["dtype"].as<std::string>();
    if (args.count("sink")) sink = args["sink"].as<int64_t>();
    RTP_CHECK(!model_dir.empty(), "--model is required (or model_dir in the recipe)");
    RTP_CHECK(!out_path.empty(), "--out is required (or heads_file in the recipe)");
    RTP_CHECK(!(args.count("retrieval-fraction") && args.count("kv-budget")),
              "--retrieval-fraction and --kv-budget exclude each other");

    rtp::RunContext ctx;
    ctx.seed = seed;
    ctx.device = rtp::parse_device(device);
    ctx.dtype = rtp::parse_dtype(dtype);
    auto model = rtp::model::load_qwen3(model_dir, ctx.device, ctx.dtype);
    const auto& cfg = model.config();
    const int64_t Lyr = cfg.num_hidden_layers, Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;

    // Calibration data.
    const bool has_tokenizer = rtp::file_exists(model_dir + "/tokenizer.json");
    rtp::heads::CalibrationSpec spec;
    spec.source = args.count("calibration") ? args["calibration"].as<std::string>() : (has_tokenizer ? "text" : "toy");
    std::string text_source;
    if (spec.source == "text") {
      const std::string tok_path = args.count("tokenizer") ? args["tokenizer"].as<std::string>() : model_dir;
      auto tok = rtp::text::Tokenizer::from_file(tok_path);
      text_source = args.count("text") ? args["text"].as<std::string>() : "builtin";
      const std::string text = args.count("text") ? rtp::read_text_file(text_source)
                                                   : rtp::heads::builtin_calibration_text();
      spec.text_tokens = tok.encode(text, /*allow_special=*/false);
      RTP_CHECK(!spec.text_tokens.empty(), "calibration text '", text_source, "' has no tokens");
      for (auto t : spec.text_tokens)
        RTP_CHECK(t >= 0 && t < cfg.vocab_size, "token id ", t, " of the calibration text is outside the model's ",
                  "vocabulary of ", cfg.vocab_size, " (wrong --tokenizer?)");
    } else if (spec.source != "toy") {
      throw rtp::Error("unknown --calibration '" + spec.source + "': expected toy or text");
    }
    spec.vocab_size = cfg.vocab_size;
    spec.num_sequences = args["num-sequences"].as<int64_t>();
    spec.seq_len = args.count("seq-len") ? args["seq-len"].as<int64_t>()
                                         : std::min<int64_t>(cfg.max_position_embeddings, 1024);
    spec.span_len = args.count("span-len") ? args["span-len"].as<int64_t>()
                                           : std::clamp<int64_t>(spec.seq_len / 8, 8, 256);
    spec.seed = seed;
    RTP_CHECK(spec.seq_len <= cfg.max_position_embeddings || cfg.max_position_embeddings <= 0, "--seq-len ",
              spec.seq_len, " exceeds the model's max_position_embeddings ", cfg.max_position_embeddings);
    if (spec.source == "text" && static_cast<int64_t>(spec.text_tokens.size()) < spec.seq_len)
      std::cerr << "note: calibration text has " << spec.text_tokens.size() << " tokens < seq_len " << spec.seq_len
                << ": it repeats within each sequence, which spreads copy attention over the repeats\n";

    rtp::heads::ScoreOptions so;
    so.window = args.count("window") ? args["window"].as<int64_t>()
                : (recipe_window > 0 && recipe_window < spec.seq_len)
                    ? recipe_window
                    : std::max<int64_t>(1, std::min<int64_t>(spec.seq_len / 4, 8192));
    so.sink = sink;
    so.chunk_rows = args["chunk-rows"].as<int64_t>();
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

    auto scores = rtp::heads::score_model_heads(
        model, sequences, so, args["batch-size"].as<int64_t>(),
        [](int64_t done, int64_t total) { std::cerr << "sequence " << done << "/" << total << "\n"; });

    // Selection.
    rtp::heads::SelectionRule rule;
    rule.aggregation = rtp::heads::parse_aggregation(args["aggregation"].as<std::string>());
    rule.per_query_head = args.count("per-query-head") > 0;
    rule.head_dim = cfg.head_dim;
    rule.bytes_per_element = dtype_bytes(ctx.dtype);
    rule.budget_context = args.count("budget-context") ? args["budget-context"].as<int64_t>()
                                                       : std::max<int64_t>(cfg.max_position_embeddings, spec.seq_len);
    if (args.count("kv-budget")) {
      rule.kind = rtp::heads::SelectionRule::Kind::kBudget;
      rule.budget_bytes = rtp::heads::parse_byte_size(args["kv-budget"].as<std::string>());
    } else if (args.count("retrieval-fraction")) {
      rule.fraction = args["retrieval-fraction"].as<double>();
    } else if (budget_fraction > 0) {  // recipe kv_budget: a fraction of the dense (all heads full) KV cache
      rule.kind = rtp::heads::SelectionRule::Kind::kBudget;
      rule.budget_bytes = static_cast<int64_t>(budget_fraction * static_cast<double>(Lyr * Hkv) *
                                               static_cast<double>(rule.bytes_per_kv_head()));
    } else {
      rule.fraction = fraction;
    }
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
    const std::string svg = args.count("svg") ? args["svg"].as<std::string>() : svg_path_for(out_path);
    // Like the other tools' output directories: create what is missing (HDF5 would only say it cannot create the file).
    for (const std::string& f : {out_path, svg}) {
      const auto slash = f.find_last_of('/');
      if (slash != std::string::npos && slash > 0) rtp::make_directories(f.substr(0, slash));
    }
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
    const int64_t top = std::min<int64_t>(args["top"].as<int64_t>(), static_cast<int64_t>(order.size()));
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
