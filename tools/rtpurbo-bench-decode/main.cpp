// rtpurbo-bench-decode: time per generated token of the library's generation path (what rtpurbo-eval runs), dense
// and sparse, eager and through CUDA graphs, for a model built from a config.json with random weights (speed does
// not depend on their values). The floor is the bytes a token must read (weights, plus the KV the attention reads)
// over the card's measured copy bandwidth. Writes JSON under bench/results/.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <cxxopts.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "commit_id.h"
#include "kineto_trace.h"
#include "layer_breakdown.h"
#include "main_guard.h"
#include "tool_args.h"
#include "torch_args.h"
#include "rtp/core/file_io.h"
#include "rtp/model/decode_stepper.h"
#include "rtp/model/qwen3.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/sparse/sparse_cache.h"
#include "rtp/torch/run_context.h"

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace {

using nlohmann::json;

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Device-to-device copy of 1 GiB: bytes read plus bytes written per second, the reachable memory bandwidth.
double copy_bandwidth(const torch::Device& d) {
  auto a = torch::rand({int64_t{1} << 28}, torch::TensorOptions(torch::kFloat32).device(d));
  auto b = torch::empty_like(a);
  b.copy_(a);
  sync(d);
  const int reps = 10;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) b.copy_(a);
  sync(d);
  return 2.0 * static_cast<double>(a.numel() * 4) * reps / seconds_since(t0);
}

std::string card_name(const torch::Device& d) {
#ifdef RTPURBO_WITH_CUDA
  if (d.is_cuda()) return at::cuda::getDeviceProperties(d.index() < 0 ? 0 : d.index())->name;
#endif
  return "cpu";
}

std::string moe_launch_shape_text(const rtp::kernels::MoeDecodeLaunchShape& s) {
  return std::to_string(s.gate_up_rows_per_warp) + "," + std::to_string(s.down_warps_per_block) + "," +
         (s.down_loads_ahead ? "1" : "0") + (s.one_launch ? ",1" : "");
}

// "rows,warps,ahead[,one]", e.g. "2,4,1" or "2,8,1,1"; the ranges are the kernels' own
// (check_moe_decode_launch_shape).
rtp::kernels::MoeDecodeLaunchShape parse_moe_launch_shape(const std::string& text) {
  rtp::kernels::MoeDecodeLaunchShape shape;
  int ahead = -1, one = 0;
  char tail = 0;
  const int got = std::sscanf(text.c_str(), "%d,%d,%d,%d%c", &shape.gate_up_rows_per_warp, &shape.down_warps_per_block,
                              &ahead, &one, &tail);
  if ((got != 3 && got != 4) || (ahead != 0 && ahead != 1) || (one != 0 && one != 1))
    throw rtp::tools::UsageError("--moe-launch-shape: expected ROWS,WARPS,AHEAD[,ONE] (integers, AHEAD and ONE 0 or 1), "
                                 "found '" + text + "'");
  shape.down_loads_ahead = ahead == 1;
  shape.one_launch = one == 1;
  if (const char* why = rtp::kernels::check_moe_decode_launch_shape(shape); *why)
    throw rtp::tools::UsageError(std::string("--moe-launch-shape '") + text + "': " + why);
  return shape;
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-bench-decode", [&]() -> int {
    cxxopts::Options opts("rtpurbo-bench-decode",
                          "Time per generated token of the generation path (dense and sparse, eager and CUDA graphs) "
                          "for a model with random weights.");
    // clang-format off
    opts.add_options()
      ("config", "directory with the model's config.json (the default is relative to the repository root)",
       cxxopts::value<std::string>()->default_value("data/configs/qwen3-0.6b"))
      ("lengths", "prompt lengths (tokens in the cache when decoding starts)", cxxopts::value<std::string>()->default_value("4096,32768"))
      ("tokens", "timed decode steps per run (after 4 untimed ones)", cxxopts::value<std::string>()->default_value("32"))
      ("retrieval-fraction", "sparse: share of KV heads drawn at random as retrieval heads, in (0, 1] (at least one head)", cxxopts::value<std::string>()->default_value("0.15"))
      ("window", "sparse: streaming window", cxxopts::value<std::string>()->default_value("2048"))
      ("top-p", "sparse: top-p of the token selection, in (0, 1]", cxxopts::value<std::string>()->default_value("0.9"))
      ("prefill-chunk", "prompt tokens per prefill forward", cxxopts::value<std::string>()->default_value("4096"))
      ("paths", "comma-separated: grouped (MoE only), forward, eager, graphs (GPU only; the whole step one graph where the "
                "cache's decode kernel reads the length on the device), graphs-split (GPU only; the attention calls eager "
                "between the layers' graphs, as before), greedy (graphs where there are any, through greedy_continue, "
                "stopping at the config's eos tokens); on a CPU the default leaves out graphs, and grouped runs for MoE "
                "configs only", cxxopts::value<std::string>()->default_value("grouped,forward,eager,graphs"))
      ("breakdown", "also time each op of one layer's step alone (in CUDA graphs) at each length, against the bytes it "
                    "moves: where a step's time goes (CUDA only)")
      ("device", "cuda, cuda:N or cpu", cxxopts::value<std::string>()->default_value("cuda"))
      ("dtype", "bfloat16, float16 or float32", cxxopts::value<std::string>()->default_value("bfloat16"))
      ("seed", "weights, heads, indexer and prompts", cxxopts::value<std::string>()->default_value("0"))
      ("gemv-max-ratio", "decode projections [m, k] take the GEMV kernel where m <= this times k, cuBLAS elsewhere (the "
                         "model's default)", cxxopts::value<std::string>()->default_value(
                                               std::to_string(rtp::ops::kDecodeGemvMaxRatio)))
      ("gemv-layout", "the GEMV's warps: auto (whole rows where m >= 4096), split (four warps per row) or whole (a warp "
                      "per two rows)", cxxopts::value<std::string>()->default_value("auto"))
      ("separate-norms", "the residual add + RMSNorm after the o and dense down projections as kernels of their own, "
                         "not in the projection's launch (the GEMV's epilogue, the model's default up to 2048 outputs)")
      ("fused-norm-max-m", "the widest o / down projection (outputs) that takes the fused add + RMSNorm",
                           cxxopts::value<std::string>()->default_value(std::to_string(rtp::ops::kFusedAddNormMaxM)))
      ("separate-qk-norm", "the q/k RMSNorm + RoPE as a kernel of its own, not in the q/k/v projection's launch (the "
                           "GEMV's head epilogue)")
      ("separate-kv-store", "a dense cache's token store (k and v rows into the cache) as a kernel of its own, not in "
                            "the q/k/v projection's launch (with the fused q/k norm)")
      ("separate-routing", "the MoE routing (softmax, top-k) as a kernel of its own, not in the router projection's launch")
      ("separate-swiglu", "a dense MLP's SwiGLU as a kernel of its own, not in the gate/up projection's launch")
      ("separate-moe-norm", "the residual add + RMSNorm after an MoE block as a kernel of its own, not in the experts' "
                            "down pass launch")
      ("trace-prefill", "write a Kineto (Chrome JSON) trace of the first length's dense and sparse prefill to PREFIX-dense.json "
                        "and PREFIX-sparse.json (their prefill seconds then include the profiler's cost)",
       cxxopts::value<std::string>())
      ("chunk-attention", "a dense prompt chunk after the first: split-cudnn (its queries over the earlier keys and over "
                          "its own by cuDNN, merged; the model's default on Hopper) or flash (FlashAttention-2, one call)",
       cxxopts::value<std::string>()->default_value("split-cudnn"))
      ("moe-launch-shape", "the MoE decode kernels' launch shape: gate/up rows per warp (1, 2, 4), down warps per block "
                           "(4, 8), down loads ahead (0, 1; the two-launch down pass's), optionally both passes in one "
                           "launch (0, 1; 0 where left out; needs 8 down warps, 1 or 2 rows)", cxxopts::value<std::string>()->default_value(moe_launch_shape_text({})))
      ("cublas-lm-head", "the LM head by cuBLAS and a cast to float32, not the GEMV with float32 logits (the model's "
                         "default)")
      ("out", "JSON output (default: bench/results/decode-steps-<card>-<config>.json)", cxxopts::value<std::string>())
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    using rtp::config::at_least;
    using rtp::config::range;
    const auto lengths = rtp::tools::positive_integer_list("lengths", args["lengths"].as<std::string>());
    const int64_t tokens = rtp::tools::integer_arg(args, "tokens", at_least(1));
    const double fraction = rtp::tools::number_arg(args, "retrieval-fraction", range(0, 1, "(]"));
    const int64_t window = rtp::tools::integer_arg(args, "window", at_least(1));
    const double top_p = rtp::tools::number_arg(args, "top-p", range(0, 1, "(]"));
    const int64_t chunk = rtp::tools::integer_arg(args, "prefill-chunk", at_least(64));
    const uint64_t seed = static_cast<uint64_t>(rtp::tools::integer_arg(args, "seed", at_least(0)));
    const int64_t gemv_max_ratio = rtp::tools::integer_arg(args, "gemv-max-ratio", at_least(1));
    const auto dtype = rtp::tools::dtype_arg(args["dtype"].as<std::string>());
    if (chunk % 64 != 0) throw rtp::tools::UsageError("--prefill-chunk must be a multiple of the block size (64)");
    const bool paths_given = args.count("paths") > 0;
    auto paths = rtp::tools::choice_list("paths", args["paths"].as<std::string>(),
                                         {"grouped", "forward", "eager", "graphs", "graphs-split", "greedy"});
    const bool breakdown = args.count("breakdown") > 0;
    // A misspelled --device is a usage error; cuda on a machine without one an error naming the flag (exit 1).
    const auto device = rtp::tools::device_arg(args["device"].as<std::string>());
    if (breakdown && !device.is_cuda()) throw rtp::tools::UsageError("--breakdown times CUDA graphs: it needs --device cuda");
    if (!device.is_cuda()) {
      // graphs and graphs-split replay CUDA graphs: asked for by name on a CPU they are a mistake (they were skipped,
      // and --paths graphs wrote empty results); the default list just leaves them out.
      for (const auto& p : paths)
        if (paths_given && (p == "graphs" || p == "graphs-split"))
          throw rtp::tools::UsageError("--paths " + p + " replays CUDA graphs: it needs --device cuda (on a CPU: "
                                       "grouped, forward, eager or greedy)");
      paths.erase(std::remove_if(paths.begin(), paths.end(),
                                 [](const std::string& p) { return p == "graphs" || p == "graphs-split"; }),
                  paths.end());
    }
    const std::string config_dir = args["config"].as<std::string>();
    if (!args.count("config") && !rtp::directory_exists(config_dir))
      RTP_THROW("--config: the default '", config_dir, "' does not exist here: it is relative to the repository root; "
                "run from there or pass --config DIR (a directory with the model's config.json)");
    rtp::require_directory(config_dir, "--config", "(expected a directory with the model's config.json)");
    // Every length against the model's positions before the model is built and anything is measured (a length too
    // long used to fail after the shorter ones had run, with no JSON written).
    const auto model_config = rtp::model::load_model_config(config_dir + "/config.json");
    const int64_t warmup = 4;
    for (const int64_t len : lengths)
      rtp::model::check_fits_positions(model_config, len + warmup + tokens,
                                       rtp::str_cat("--lengths ", len, " plus ", warmup + tokens, " decode steps ="));
    if (!model_config.is_moe()) paths.erase(std::remove(paths.begin(), paths.end(), "grouped"), paths.end());
    if (paths.empty())
      throw rtp::tools::UsageError("--paths " + args["paths"].as<std::string>() + " measures nothing here: grouped " +
                                   "runs for MoE configs only, and " + config_dir + " is a dense model");
    std::string config_name = config_dir;
    while (!config_name.empty() && config_name.back() == '/') config_name.pop_back();
    config_name = config_name.substr(config_name.find_last_of('/') + 1);
    const std::string card = card_name(device);
    std::string card_slug;
    for (char ch : card) card_slug += std::isalnum(static_cast<unsigned char>(ch)) ? static_cast<char>(std::tolower(ch)) : '-';
    const std::string out_path = args.count("out") ? args["out"].as<std::string>()
                                                   : "bench/results/decode-steps-" + card_slug + "-" + config_name + ".json";
    if (!args.count("out") && !rtp::directory_exists("bench/results"))
      RTP_THROW("--out: the default '", out_path, "' is relative to the repository root, and 'bench/results' does not "
                "exist here: run from there or pass --out FILE");
    rtp::require_output_directory_for(out_path, "--out");
    const std::string trace_prefix = args.count("trace-prefill") ? args["trace-prefill"].as<std::string>() : "";
    if (!trace_prefix.empty()) rtp::require_output_directory_for(trace_prefix + "-dense.json", "--trace-prefill");

    // Every knob's value before the model is built (seconds to minutes for a large config).
    const std::string gemv_layout = args["gemv-layout"].as<std::string>();
    if (gemv_layout != "auto" && gemv_layout != "split" && gemv_layout != "whole")
      throw rtp::tools::UsageError("--gemv-layout: expected auto, split or whole, found '" + gemv_layout + "'");
    rtp::model::Qwen3Model::GemvEpilogues epilogues;
    epilogues.add_norm = args.count("separate-norms") == 0;
    epilogues.add_norm_max_m = rtp::tools::integer_arg(args, "fused-norm-max-m", at_least(1));
    epilogues.qk_norm_rope = args.count("separate-qk-norm") == 0;
    epilogues.kv_store = args.count("separate-kv-store") == 0;
    epilogues.moe_routing = args.count("separate-routing") == 0;
    epilogues.moe_add_norm = args.count("separate-moe-norm") == 0;
    epilogues.swiglu = args.count("separate-swiglu") == 0;
    const bool lm_head_gemv = args.count("cublas-lm-head") == 0;
    const auto chunk_attention = args["chunk-attention"].as<std::string>();
    if (chunk_attention != "split-cudnn" && chunk_attention != "flash")
      throw rtp::tools::UsageError("--chunk-attention: expected split-cudnn or flash, found '" + chunk_attention + "'");
    const auto moe_shape = parse_moe_launch_shape(args["moe-launch-shape"].as<std::string>());
    // The GEMV, its epilogues, the MoE decode kernels and the prompt-chunk attention choice are CUDA kernels: on a CPU
    // (or, for the MoE shape, in a dense model) a knob of theirs would be recorded in the JSON without changing a thing.
    for (const char* knob : {"gemv-max-ratio", "gemv-layout", "separate-norms", "fused-norm-max-m", "separate-qk-norm",
                             "separate-kv-store", "separate-routing", "separate-swiglu", "separate-moe-norm",
                             "cublas-lm-head", "chunk-attention", "moe-launch-shape"})
      if (args.count(knob) && !device.is_cuda())
        throw rtp::tools::UsageError(std::string("--") + knob + " sets a CUDA kernel's choice: it needs --device cuda");
    if (args.count("moe-launch-shape") && !model_config.is_moe())
      throw rtp::tools::UsageError("--moe-launch-shape sets the MoE decode kernels, and " + config_dir +
                                   " is a dense model");

    torch::NoGradGuard no_grad;
    std::cerr << "building " << config_name << " with random weights on " << device << "\n";
    auto model = rtp::model::random_qwen3(config_dir, device, dtype, seed);
    model.set_gemv_max_ratio(gemv_max_ratio);
    model.set_gemv_layout(gemv_layout == "split"   ? rtp::kernels::GemvLayout::SplitRows
                          : gemv_layout == "whole" ? rtp::kernels::GemvLayout::WholeRows
                                                   : rtp::kernels::GemvLayout::Auto);
    model.set_gemv_epilogues(epilogues);
    model.set_lm_head_gemv(lm_head_gemv);
    model.set_chunk_attention(chunk_attention == "flash" ? rtp::model::ChunkAttention::Flash
                                                         : rtp::model::ChunkAttention::SplitCudnn);
    model.set_moe_launch_shape(moe_shape);
    const auto stop_ids = rtp::model::load_stop_token_ids(config_dir);
    const auto& c = model.config();
    // Bytes of weights one token reads: every tensor, but of an MoE layer's experts only the top-k of them.
    int64_t weight_bytes = 0, parameter_count = 0;
    for (const auto& [name, t] : model.named_parameters()) {
      const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
      parameter_count += t.numel();
      weight_bytes += name.find(".mlp.experts.") != std::string::npos ? bytes / c.num_experts * c.num_experts_per_tok : bytes;
    }
    const int64_t elem = static_cast<int64_t>(torch::elementSize(dtype));

    // Retrieval heads drawn at random (at least one), an indexer with random projections.
    const int64_t total_heads = c.num_hidden_layers * c.num_key_value_heads;
    auto heads = rtp::sparse::HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
    std::vector<int64_t> order(static_cast<size_t>(total_heads));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(seed);
    std::shuffle(order.begin(), order.end(), rng);
    const int64_t n_ret = std::max<int64_t>(1, static_cast<int64_t>(std::llround(fraction * static_cast<double>(total_heads))));
    for (int64_t i = 0; i < n_ret; ++i) heads.retrieval[order[i] / c.num_key_value_heads][order[i] % c.num_key_value_heads] = 1;
    rtp::sparse::Indexer indexer(heads, c.head_dim, 16);
    indexer.to(device, dtype);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
    for (const auto& [name, t] : indexer.named_parameters())
      t.copy_(at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(c.head_dim)), t.sizes(), gen));
    rtp::sparse::SparseSettings st;
    st.window = window;
    st.top_p = top_p;

    const double bandwidth = copy_bandwidth(device);
    std::ostringstream cmd;
    for (int i = 0; i < argc; ++i) cmd << (i ? " " : "") << argv[i];
    json J = {{"card", card}, {"commit", rtp::tools::commit_id()}, {"command", cmd.str()}, {"config", config_name},
              {"parameters", parameter_count}, {"weight_bytes_read_per_token", weight_bytes}, {"dtype", rtp::dtype_name(dtype)},
              {"copy_bandwidth_gbs", bandwidth / 1e9}, {"retrieval_kv_heads", n_ret}, {"kv_heads", total_heads},
              {"window", window}, {"sink", st.sink}, {"top_p", top_p}, {"timed_tokens", tokens}, {"seed", seed},
              {"gemv_max_ratio", gemv_max_ratio}, {"gemv_layout", gemv_layout}, {"fused_projection_norms", epilogues.add_norm},
              {"fused_norm_max_m", epilogues.add_norm_max_m},
              {"fused_qk_norm_rope", epilogues.qk_norm_rope}, {"fused_moe_routing", epilogues.moe_routing},
              {"fused_moe_add_norm", epilogues.moe_add_norm}, {"fused_kv_store", epilogues.kv_store},
              {"fused_swiglu", epilogues.swiglu},
              {"lm_head_gemv", lm_head_gemv}, {"chunk_attention", chunk_attention},
              {"moe_launch_shape", args["moe-launch-shape"].as<std::string>()}};
    json rows = json::array();
    std::printf("%s, %s, %lld layers, %.2f B parameters, %.2f GB of weights read per token, copy bandwidth %.0f GB/s\n",
                card.c_str(), config_name.c_str(), static_cast<long long>(c.num_hidden_layers), parameter_count / 1e9,
                weight_bytes / 1e9, bandwidth / 1e9);
    std::printf("%8s %7s %8s %12s %12s %10s %10s %14s\n", "length", "mode", "path", "ms/token", "floor ms", "of floor",
                "prefill s", "first step ms");
    for (int64_t len : lengths) {
      auto pgen = at::make_generator<at::CPUGeneratorImpl>(seed + 2 + static_cast<uint64_t>(len));
      // On the host, where a tokenizer's ids are: each chunk's forward checks them there and uploads them without a wait.
      const auto prompt = torch::randint(0, c.vocab_size, {1, len}, pgen, torch::kInt64);
      // forward: model.forward per token (the generation path before the stepper: one range check and a few
      // thousand ATen calls per token); eager: the stepper's pieces without graphs; graphs: replayed. MoE models
      // add grouped: forward with the experts grouped by counts read on the host (before the experts-by-id kernels).
      for (const bool sparse : {false, true})
        for (const std::string& variant : paths) {
          // greedy replays graphs where there are any (eager on a CPU).
          const bool graphs = variant == "graphs" || variant == "graphs-split" || (variant == "greedy" && device.is_cuda());
          if ((variant == "graphs" || variant == "graphs-split") && !device.is_cuda()) continue;
          if (variant == "grouped" && !c.is_moe()) continue;
          model.set_moe_experts_by_id(variant != "grouped");
          std::cerr << "length " << len << ", " << (sparse ? "sparse" : "dense") << ", " << variant << "\n";
          std::unique_ptr<rtp::model::KVCache> dense_cache;
          std::unique_ptr<rtp::sparse::SparseCache> sparse_cache;
          rtp::model::ForwardOptions dense_o;
          const bool traced = !trace_prefix.empty() && len == lengths.front() && variant == paths.front();
          std::unique_ptr<rtp::tools::KinetoTrace> trace;
          if (traced) trace = std::make_unique<rtp::tools::KinetoTrace>(device.is_cuda());
          auto t0 = std::chrono::steady_clock::now();
          torch::Tensor logits;
          if (sparse) {
            sparse_cache = std::make_unique<rtp::sparse::SparseCache>(c, heads, st, &indexer, len + warmup + tokens, device, dtype);
            sparse_cache->set_device_attention(variant != "graphs-split");
            logits = rtp::sparse::prefill_chunked(model, *sparse_cache, prompt, chunk);
          } else {
            dense_cache = std::make_unique<rtp::model::KVCache>(c.num_hidden_layers);
            dense_cache->reserve(len + warmup + tokens);
            dense_cache->set_device_attention(variant != "graphs-split");
            dense_o.cache = dense_cache.get();
            logits = rtp::model::prefill_chunked(model, *dense_cache, prompt, chunk);
          }
          sync(device);
          const double prefill_s = seconds_since(t0);
          if (trace) {
            const std::string path = trace_prefix + (sparse ? "-sparse.json" : "-dense.json");
            trace->save(path);
            std::cerr << "prefill trace: " << path << "\n";
          }
          auto options = [&] { return sparse ? sparse_cache->options() : dense_o; };
          rtp::model::DecodeStepper stepper(model, graphs);
          auto token = logits.select(1, logits.size(1) - 1).argmax(-1, true);  // [1, 1]
          auto next = [&](const torch::Tensor& t) {
            auto l = variant == "forward" || variant == "grouped" ? model.forward(t, options()) : stepper.step(t, options());
            return l.select(1, 0).argmax(-1, true);
          };
          // The first step alone: with graphs it captures them (the cost a new cache pays once).
          t0 = std::chrono::steady_clock::now();
          token = next(token);
          sync(device);
          const double first_step_ms = seconds_since(t0) * 1e3;
          // greedy: the last untimed step's logits start greedy_continue (the caches hold warmup + tokens steps).
          for (int64_t i = 1; i < (variant == "greedy" ? warmup - 1 : warmup); ++i) token = next(token);
          sync(device);
          int64_t steps = tokens;
          if (variant == "greedy") {
            // The generation loop the eval runs: argmax, stop tokens, a stop check every few tokens.
            const auto l = stepper.step(token, options());
            sync(device);
            t0 = std::chrono::steady_clock::now();
            const auto generated = rtp::model::greedy_continue(stepper, l, tokens + 1, stop_ids, options);
            steps = std::max<int64_t>(1, generated.size(1) - 1);
          } else {
            t0 = std::chrono::steady_clock::now();
            for (int64_t i = 0; i < tokens; ++i) token = next(token);
          }
          sync(device);
          const double ms = seconds_since(t0) * 1e3 / static_cast<double>(steps);
          // What the last step read besides the weights: the whole dense cache, or per layer the streaming rings,
          // the retrieval heads' index keys and the k/v of the tokens they selected.
          const int64_t kv_len = len + warmup + tokens;
          int64_t kv_read = 0;
          double selected = 0, selectable = 0;
          if (sparse) {
            for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
              int64_t ret = 0;
              for (int64_t g = 0; g < c.num_key_value_heads; ++g) ret += heads.is_retrieval(l, g);
              const int64_t str = c.num_key_value_heads - ret;
              kv_read += str * std::min(kv_len, st.sink + st.window) * 2 * c.head_dim * elem;
              if (ret > 0) {
                const auto& sel = sparse_cache->last_selected()[static_cast<size_t>(l)];
                const int64_t n_sel = sel.defined() ? sel.sum().item<int64_t>() : 0;
                kv_read += ret * kv_len * 16 * elem + n_sel * 2 * c.head_dim * elem;
                selected += static_cast<double>(n_sel);
                selectable += static_cast<double>(ret * kv_len);
              }
            }
          } else {
            kv_read = c.num_hidden_layers * c.num_key_value_heads * kv_len * 2 * c.head_dim * elem;
          }
          const double floor_ms = static_cast<double>(weight_bytes + kv_read) / bandwidth * 1e3;
          json R = {{"length", len}, {"mode", sparse ? "sparse" : "dense"}, {"path", variant}, {"ms_per_token", ms},
                    {"floor_ms", floor_ms}, {"kv_bytes_read", kv_read}, {"prefill_s", prefill_s},
                    {"first_step_ms", first_step_ms}};
          if (traced) R["prefill_traced"] = true;
          if (graphs) R["graph_captures"] = stepper.captures();
          if (variant != "forward" && variant != "grouped") R["attention_in_graph"] = stepper.attention_in_graph();
          if (variant == "greedy") R["timed_steps"] = steps;
          if (sparse) R["selected_fraction_of_retrieval_tokens"] = selectable > 0 ? selected / selectable : 0.0;
          rows.push_back(R);
          std::printf("%8lld %7s %8s %12.3f %12.3f %9.1f%% %10.2f %14.1f\n", static_cast<long long>(len),
                      sparse ? "sparse" : "dense", variant.c_str(), ms, floor_ms, 100.0 * floor_ms / ms, prefill_s, first_step_ms);
          std::fflush(stdout);
        }
    }
    J["results"] = rows;
    if (breakdown) {
      // Per length: each op alone, then the sums a step would take if it were nothing but these ops back to back.
      json B = json::array();
      for (const int64_t len : lengths) {
        const auto ops = rtp::bench::time_layer_ops(model, len, st);
        std::printf("\nlength %lld, one layer's ops alone (layer 0, %s MLP), each in a CUDA graph of 50 calls:\n",
                    static_cast<long long>(len), c.layer_is_moe(0) ? "MoE" : "dense");
        std::printf("%-10s %-52s %9s %10s %9s %8s\n", "group", "op", "us", "MB moved", "GB/s", "of copy");
        double dense_layer = 0, sparse_layer = 0, head = 0;
        for (const auto& o : ops) {
          const double gbs = static_cast<double>(o.bytes) / (o.us * 1e-6) / 1e9;
          std::printf("%-10s %-52s %9.2f %10.3f %9.0f %7.1f%%\n", o.group.c_str(), o.op.c_str(), o.us, o.bytes / 1e6, gbs,
                      100.0 * gbs * 1e9 / bandwidth);
          B.push_back({{"length", len}, {"group", o.group}, {"op", o.op}, {"us", o.us}, {"bytes", o.bytes}, {"gbs", gbs}});
          const bool dense_only = o.op.rfind("dense:", 0) == 0, sparse_only = o.op.rfind("sparse:", 0) == 0;
          if (o.group == "(compare)") continue;
          if (o.group == "head") head += o.us;
          else {
            if (!sparse_only) dense_layer += o.us;
            if (!dense_only) sparse_layer += o.us;
          }
        }
        const double L = static_cast<double>(c.num_hidden_layers);
        std::printf("sum of ops per token: dense %.3f ms (%.1f us per layer), sparse with a retrieval head in every layer "
                    "%.3f ms (%.1f us per layer); head %.1f us\n",
                    (L * dense_layer + head) / 1e3, dense_layer, (L * sparse_layer + head) / 1e3, sparse_layer, head);
        B.push_back({{"length", len}, {"sum_dense_ms", (L * dense_layer + head) / 1e3},
                     {"sum_sparse_ms", (L * sparse_layer + head) / 1e3}});
      }
      J["breakdown"] = B;
    }
    rtp::write_json_atomic(out_path, J);
    std::cout << "wrote " << out_path << "\n";
    return 0;
  });
}
