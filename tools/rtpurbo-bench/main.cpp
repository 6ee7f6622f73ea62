// rtpurbo-bench: sparse prefill / decode attention of one layer against FlashAttention-2 (SDPA flash backend)
// and cuDNN (SDPA cuDNN backend) in the same process. Qwen3-30B-A3B attention shape. Writes JSON under
// bench/results/ and prints a table. Retrieval structure is planted in q/k and in the indexer inputs so that
// the real selection runs at the paper's density (calibrated per length by bisection on the sharpness).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "commit_id.h"
#include "main_guard.h"
#include "tool_args.h"
#include "moe_layer_decode.h"
#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/kernels/sparse_attention.h"
#include "rtp/ops/sparse_attention.h"

using namespace rtp;
using kernels::HeadKind;
using json = nlohmann::json;

namespace {

void ck(cudaError_t e, const char* what) { RTP_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e)); }

// median time in ms of fn over reps after warm-up, CUDA events on the current stream
double time_ms(const std::function<void()>& fn, int warm, int reps) {
  auto s = c10::cuda::getCurrentCUDAStream().stream();
  for (int i = 0; i < warm; ++i) fn();
  ck(cudaStreamSynchronize(s), "warm-up");
  std::vector<double> t;
  cudaEvent_t a, b;
  ck(cudaEventCreate(&a), "event");
  ck(cudaEventCreate(&b), "event");
  for (int i = 0; i < reps; ++i) {
    ck(cudaEventRecord(a, s), "record");
    fn();
    ck(cudaEventRecord(b, s), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double target_density(int64_t N) {  // kept fraction of causal key blocks for retrieval heads (paper sparsity)
  if (N <= 32768) return 0.22;
  if (N <= 65536) return 0.11;
  if (N <= 131072) return 0.07;
  if (N <= 262144) return 0.05;
  return 0.03;
}

struct Planted {
  torch::Tensor iq, ik;  // [1, G, N, 16], [1, N, 16] bf16
  torch::Tensor ub, wc;  // directions per query block / key block [nb, 16]
};

// index_q = a*u_block(i) + noise, index_k = a*w_block(j) + noise, a = 2*sqrt(kappa): block logit ~ kappa*cos.
Planted plant_index(int64_t N, int64_t G, int B, double kappa, uint64_t seed) {
  torch::manual_seed(seed);
  auto opt = torch::TensorOptions().device(torch::kCUDA);
  const int64_t nb = (N + B - 1) / B;
  Planted p;
  p.ub = torch::nn::functional::normalize(torch::randn({nb, 16}, opt), torch::nn::functional::NormalizeFuncOptions().dim(1));
  p.wc = torch::nn::functional::normalize(torch::randn({nb, 16}, opt), torch::nn::functional::NormalizeFuncOptions().dim(1));
  const double a = 2 * std::sqrt(kappa);
  auto bi = torch::floor_divide(torch::arange(N, opt.dtype(torch::kLong)), B);
  p.iq = (p.ub.index_select(0, bi).unsqueeze(0) * a + torch::randn({G, N, 16}, opt) * 0.1).unsqueeze(0).to(torch::kBFloat16);
  p.ik = (p.wc.index_select(0, bi) * a + torch::randn({N, 16}, opt) * 0.1).unsqueeze(0).to(torch::kBFloat16);
  return p;
}

struct Lists {
  torch::Tensor counts, indices;
};
Lists run_select(const Planted& p, int64_t N, int64_t G, int B, int max_blocks) {
  const int64_t nb = (N + B - 1) / B;
  auto opt = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kInt32);
  Lists l{torch::empty({1, nb}, opt), torch::empty({1, nb, max_blocks}, opt)};
  kernels::BlockSelectParams sp;
  sp.index_q = p.iq.data_ptr();
  sp.index_k = p.ik.data_ptr();
  sp.index_dtype = kernels::DType::BF16;
  sp.counts = l.counts.data_ptr<int32_t>();
  sp.indices = l.indices.data_ptr<int32_t>();
  sp.num_ret_heads = 1;
  sp.group_size = int(G);
  sp.seq_len = N;
  sp.block_size = B;
  sp.max_blocks = max_blocks;
  sp.top_p = 0.9f;
  ck(kernels::select_blocks_cuda(sp, c10::cuda::getCurrentCUDAStream()), "select_blocks_cuda");
  return l;
}

double density_of(const torch::Tensor& counts, int64_t nb) {
  const double causal = double(nb) * (nb + 1) / 2;
  return counts.to(torch::kDouble).sum().item<double>() / causal;
}

// Times fn(k, v) with native GQA K/V; if the backend rejects it, with K/V repeated to the query heads.
// Returns NaN when the backend fails either way.
// fn run once (allocations and one-time setup happen outside the capture), then captured on the current stream,
// which must not be the default stream (the callers hold a pool stream).
std::unique_ptr<at::cuda::CUDAGraph> capture_graph(const std::function<void()>& fn) {
  fn();
  ck(cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream().stream()), "sync");
  auto graph = std::make_unique<at::cuda::CUDAGraph>();
  graph->capture_begin();
  fn();
  graph->capture_end();
  return graph;
}

// Median ms of fn replayed from a CUDA graph: what a decode loop that captures its step pays, without the host
// launch overhead that dominates kernels of tens of microseconds. NaN (and a note) if fn cannot be captured.
double time_graph_ms(const char* name, const std::function<void()>& fn, int reps, std::string* note) {
  try {
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    const auto graph = capture_graph(fn);
    return time_ms([&] { graph->replay(); }, 3, reps);
  } catch (const std::exception& e) {
    *note += std::string(name) + " graph capture failed: " + std::string(e.what()).substr(0, 160) + "; ";
    return NAN;
  }
}

double time_baseline(const char* name, const torch::Tensor& k4, const torch::Tensor& v4, int64_t G,
                     const std::function<void(const torch::Tensor&, const torch::Tensor&)>& fn, int warm, int reps,
                     std::string* note) {
  try {
    return time_ms([&] { fn(k4, v4); }, warm, reps);
  } catch (const std::exception& e) {
    *note += std::string(name) + ": native GQA rejected, K/V repeated; ";
  }
  try {
    auto ke = k4.repeat_interleave(G, 1), ve = v4.repeat_interleave(G, 1);
    return time_ms([&] { fn(ke, ve); }, warm, reps);
  } catch (const std::exception& e) {
    *note += std::string(name) + " failed: " + std::string(e.what()).substr(0, 200) + "; ";
    return NAN;
  }
}

// When each phase of a decode call runs: call(with_retrieval, timeline) is captured in a CUDA graph after a copy
// that resets the probe, replayed 30 times; per phase the median first-block start and last-block end in us after
// the call's first block started. Returns {"with_retrieval": {...}, "streaming_only": {...}, "line": text}.
json decode_timeline(const std::function<void(bool, unsigned long long*)>& call) {
  constexpr int P = kernels::kDecodePhases;
  const char* names[P] = {"stats", "hist", "attend_other", "attend_retrieval", "combine", "@stats_rows_read",
                          "@hist_merged", "@hist_binned", "@ret_released", "@ret_compacted", "@ret_tiles_done"};
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto init = torch::zeros({2 * P}, i64);
  for (int ph = 0; ph < P; ++ph) init[2 * ph] = int64_t(-1);  // UINT64_MAX: atomicMin starts
  init = init.cuda();
  auto tl = torch::empty_like(init);
  json out;
  std::string line = "timeline (us from the call's first block, median of 30 graph replays):";
  for (bool with_ret : {true, false}) {
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    const auto graph = capture_graph([&] {
      tl.copy_(init);
      call(with_ret, reinterpret_cast<unsigned long long*>(tl.data_ptr<int64_t>()));
    });
    std::vector<std::vector<double>> st(P), en(P);
    for (int rep = 0; rep < 30; ++rep) {
      graph->replay();
      auto h = tl.cpu();
      const auto* v = reinterpret_cast<const uint64_t*>(h.data_ptr<int64_t>());
      uint64_t t0 = UINT64_MAX;
      for (int ph = 0; ph < P; ++ph) t0 = std::min(t0, v[2 * ph]);
      for (int ph = 0; ph < P; ++ph)
        if (v[2 * ph] != UINT64_MAX) {
          st[ph].push_back((v[2 * ph] - t0) * 1e-3);
          en[ph].push_back((v[2 * ph + 1] - t0) * 1e-3);
        }
    }
    auto median = [](std::vector<double> x) {
      std::sort(x.begin(), x.end());
      return x[x.size() / 2];
    };
    json J;
    line += with_ret ? "\n  layer with a retrieval head:" : "\n  streaming-only layer:      ";
    for (int ph = 0; ph < P; ++ph) {
      if (st[ph].empty()) continue;
      const double a = median(st[ph]), b = median(en[ph]);
      J[names[ph]] = {{"start_us", a}, {"end_us", b}};
      char buf[96];
      std::snprintf(buf, sizeof buf, " %s %.1f-%.1f", names[ph], a, b);
      line += buf;
    }
    out[with_ret ? "with_retrieval" : "streaming_only"] = J;
  }
  out["line"] = line;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return tools::run_guarded("rtpurbo-bench", [&]() -> int {
    cxxopts::Options opts("rtpurbo-bench", "sparse attention vs FlashAttention-2 and cuDNN (one layer)");
    // clang-format off
    opts.add_options()
      ("lengths", "prefill lengths, comma-separated", cxxopts::value<std::string>()->default_value("32768,131072,262144,1048576"))
      ("decode-lengths", "decode KV lengths, comma-separated", cxxopts::value<std::string>()->default_value("32768,131072,1048576"))
      ("baseline-max", "largest length at which the dense baselines are run; above it they are extrapolated as N^2 (0: no prefill baselines)",
       cxxopts::value<std::string>()->default_value("262144"))
      ("reps", "timed repetitions (>= 1)", cxxopts::value<std::string>()->default_value("5"))
      ("out", "JSON output directory (made if missing; bench-<UTC time>.json in it)", cxxopts::value<std::string>()->default_value("bench/results"))
      ("ret-fraction", "retrieval KV heads as a fraction, in [0, 0.25] (mix of layers with one and none of the 4 KV heads)",
       cxxopts::value<std::string>()->default_value("0.15"))
      ("decode-kept", "decode: fraction of tokens the retrieval head should keep, in (0, 1] (planted sharpness calibrated to it)",
       cxxopts::value<std::string>()->default_value("0.03"))
      ("decode-kappa", "decode: fixed planted sharpness instead of calibrating (10 = the bench before, ~15% kept at 128K; 0: calibrate)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-attend-v2", "decode: the CUDA-core attend of the version before the mma one",
       cxxopts::value<bool>()->default_value("false"))
      ("decode-no-pdl", "decode: plain stream order instead of programmatic dependent launch",
       cxxopts::value<bool>()->default_value("false"))
      ("decode-streaming-keys", "decode: target keys per streaming-head block (0: the default, 128)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-retrieval-candidates", "decode: candidates per retrieval-head block (0: the default rule by KV length: 256 up to 48K keys, 512 up to 128K, 1024 up to 256K, 2048 beyond)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-index-rows", "decode: index rows per thread per step of the stats/hist passes (0: the default, 1; or 2)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-index-tokens", "decode: tokens per stats/hist block (0: the default, 256 up to 48K keys, 512 up to 128K)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-carveout", "decode: preferred shared-memory carveout of the decode kernels in percent (-1: the driver's choice)",
       cxxopts::value<std::string>()->default_value("100"))
      ("decode-tile-stages", "decode: K/V tile stages of the attend kernel: 0 (the default, 2), 2 or 3",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-index-fma", "decode: index scores of the stats/hist passes on the CUDA cores (not mma)",
       cxxopts::value<bool>()->default_value("false"))
      ("decode-step-layers", "decode: also time a step of this many layers (own caches each) in one graph, in [0, 64] (0: skip)",
       cxxopts::value<std::string>()->default_value("10"))
      ("decode-hist-tokens", "decode: tokens per hist block (0: as the stats blocks)",
       cxxopts::value<std::string>()->default_value("0"))
      ("decode-timeline", "decode: also record when each phase of the call runs (globaltimer, from graph replays)",
       cxxopts::value<bool>()->default_value("false"))
      ("decode-bstar-in-hist", "decode: the last hist block finds b* (not every retrieval attend block)",
       cxxopts::value<bool>()->default_value("false"))
      ("prefill-kernel", "prefill attention kernel: auto (wgmma_ws on Hopper), wgmma_ws (warp-specialised), wgmma (lock step) or mma_sync",
       cxxopts::value<std::string>()->default_value("auto"))
      ("h,help", "print this help");
    // clang-format on
    // Strict (tools/common/tool_args.h): a stray argument, an unknown option or a number with trailing characters
    // is a usage error, and every value is checked here, before the CUDA device is touched and minutes of timing.
    auto args = tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::printf("%s\n", opts.help().c_str());
      return 0;
    }
    using config::at_least;
    using config::range;
    const auto lengths = tools::positive_integer_list("lengths", args["lengths"].as<std::string>());
    const auto decode_lengths = tools::positive_integer_list("decode-lengths", args["decode-lengths"].as<std::string>());
    const int64_t bmax = tools::integer_arg(args, "baseline-max", at_least(0));
    const int reps = static_cast<int>(tools::integer_arg(args, "reps", range(1, 1000000)));
    const double ret_fraction = tools::number_arg(args, "ret-fraction", range(0, 0.25));
    const double kept_target = tools::number_arg(args, "decode-kept", range(0, 1, "(]"));
    const double kappa_fixed = tools::number_arg(args, "decode-kappa", at_least(0));
    const auto int_arg = [&](const char* name, const config::Check& check) {
      return static_cast<int>(tools::integer_arg(args, name, check));
    };
    const int streaming_keys = int_arg("decode-streaming-keys", range(0, 1 << 20));
    const int retrieval_candidates = int_arg("decode-retrieval-candidates", range(0, 1 << 20));
    const int index_rows = int_arg("decode-index-rows", range(0, 2));
    const int index_tokens = int_arg("decode-index-tokens", range(0, 1 << 24));
    const int hist_tokens = int_arg("decode-hist-tokens", range(0, 1 << 24));
    const int carveout = int_arg("decode-carveout", range(-1, 100));
    const int tile_stages = int_arg("decode-tile-stages", range(0, 3));
    if (tile_stages == 1) throw tools::UsageError("--decode-tile-stages 1: expected 0 (the default), 2 or 3");
    const int step_layers = int_arg("decode-step-layers", range(0, 64));
    const std::string pk_name = tools::choice_arg(args, "prefill-kernel", {"auto", "wgmma_ws", "wgmma", "mma_sync"});
    {
      // Baselines above --baseline-max are extrapolated from the largest measured length below it.
      const int64_t shortest = *std::min_element(lengths.begin(), lengths.end());
      if (bmax != 0 && bmax < shortest)
        throw tools::UsageError(str_cat("--baseline-max ", bmax, " is below the shortest --lengths value ", shortest,
                                        ": no dense baseline would be measured to extrapolate from; use --baseline-max >= ",
                                        shortest, ", or 0 to time the sparse path only"));
    }
    // The results go to a file in --out, written at the end: whether it can be made there is found out now.
    const std::string out_dir = args["out"].as<std::string>();
    require_creatable_directory(out_dir, "--out");

    RTP_CHECK(torch::cuda::is_available(), "no CUDA device");
    std::string cmd;
    for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "properties");
    int drv = 0;
    ck(cudaDriverGetVersion(&drv), "driver");
    const int64_t Hq = 32, Hkv = 4, D = 128, G = Hq / Hkv, sink = 4, window = 8192;
    const int B = 64;
    const double wA = ret_fraction * Hkv;  // weight of the layer with one retrieval KV head
    const std::map<std::string, kernels::PrefillKernel> prefill_kernels{
        {"mma_sync", kernels::PrefillKernel::MMA_SYNC}, {"wgmma", kernels::PrefillKernel::WGMMA},
        {"wgmma_ws", kernels::PrefillKernel::WGMMA_WS}};
    const bool wgmma_ok = kernels::prefill_wgmma_available();
    RTP_CHECK(pk_name == "auto" || pk_name == "mma_sync" || wgmma_ok,
              "--prefill-kernel " + pk_name + ": this device or build cannot run it (needs sm_90a code on a 9.0 GPU)");
    // auto: what the library picks on this device, named for the record
    const std::string pk_used = pk_name != "auto" ? pk_name : wgmma_ok ? "wgmma_ws" : "mma_sync";
    const kernels::PrefillKernel prefill_kernel = prefill_kernels.at(pk_used);
    json J;
    J["card"] = prop.name;
    J["driver"] = drv;
    J["commit"] = rtp::tools::commit_id();
    J["command"] = cmd;
    J["prefill_kernel"] = pk_used;
    J["shape"] = {{"Hq", Hq}, {"Hkv", Hkv}, {"D", D}, {"window", window}, {"sink", sink}, {"block", B}, {"top_p", 0.9},
                  {"retrieval_kv_heads_per_layer", wA}};
    auto bf = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16);
    double base_fa2_ms = 0, base_cud_ms = 0;
    int64_t base_len = 0;
    std::vector<std::string> rows;
    for (int64_t N : lengths) {
      const int64_t nb = (N + B - 1) / B;
      json R;
      R["N"] = N;
      // planted selection density: bisection on kappa
      double lo = 1, hi = 60, kappa = 10, dens = 0;
      Planted pl;
      Lists lists;
      const int max_blocks = int(nb);
      for (int it = 0; it < 8; ++it) {
        kappa = std::sqrt(lo * hi);
        pl = plant_index(N, G, B, kappa, 42);
        lists = run_select(pl, N, G, B, max_blocks);
        dens = density_of(lists.counts, nb);
        if (std::fabs(dens / target_density(N) - 1) < 0.08) break;
        if (dens > target_density(N)) lo = kappa;
        else hi = kappa;
      }
      // q/k/v with the same structure in the retrieval head's first 16 dims
      torch::manual_seed(7);
      auto q = torch::randn({Hq, N, D}, bf) * 0.5, k = torch::randn({Hkv, N, D}, bf) * 0.5,
           v = torch::randn({Hkv, N, D}, bf);
      const double gam = std::sqrt(std::sqrt(double(D)) / 4.0);
      q.index_put_({torch::indexing::Slice(0, G), torch::indexing::Slice(), torch::indexing::Slice(0, 16)},
                   (pl.iq[0].to(torch::kFloat) * gam).to(torch::kBFloat16));
      k.index_put_({0, torch::indexing::Slice(), torch::indexing::Slice(0, 16)}, (pl.ik[0].to(torch::kFloat) * gam).to(torch::kBFloat16));
      auto o = torch::empty_like(q);
      HeadKind kindsA[4] = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING};
      HeadKind kindsB[4] = {HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING};
      auto attn = [&](const HeadKind* kinds, kernels::PrefillKernel kern) {
        kernels::SparseAttentionParams p;
        p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr(), p.o = o.data_ptr();
        p.dtype = kernels::DType::BF16;
        p.num_q_heads = int(Hq), p.num_kv_heads = int(Hkv), p.seq_len = N, p.head_dim = int(D);
        p.head_kind = kinds, p.sink = sink, p.window = window, p.block_size = B;
        p.block_counts = lists.counts.data_ptr<int32_t>(), p.block_indices = lists.indices.data_ptr<int32_t>();
        p.max_blocks = max_blocks;
        p.prefill_kernel = kern;
        ck(kernels::sparse_attention_cuda(p, c10::cuda::getCurrentCUDAStream()), "sparse_attention_cuda");
      };
      const double t_sel = time_ms([&] { lists = run_select(pl, N, G, B, max_blocks); }, 1, reps);
      const double tA = time_ms([&] { attn(kindsA, prefill_kernel); }, 1, reps);
      const double tB = time_ms([&] { attn(kindsB, prefill_kernel); }, 1, reps);
      // the other kernels this device runs, on the same layers, for the record
      auto ms_pair = [](double x, double y) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%.2f / %.2f", x, y);
        return std::string(buf);
      };
      std::string kernel_times = pk_used + " " + ms_pair(tA, tB);
      for (const auto& [name, kern] : prefill_kernels)
        if (name != pk_used && (kern == kernels::PrefillKernel::MMA_SYNC || wgmma_ok)) {
          const double a_ms = time_ms([&] { attn(kindsA, kern); }, 1, reps), b_ms = time_ms([&] { attn(kindsB, kern); }, 1, reps);
          R[name + "_attn_ms"] = {{"with_retrieval", a_ms}, {"streaming_only", b_ms}};
          kernel_times += ", " + name + " " + ms_pair(a_ms, b_ms);
        }
      std::printf("N=%lld prefill kernels, ms (layer with a retrieval head / streaming-only): %s\n", (long long)N,
                  kernel_times.c_str());
      std::fflush(stdout);
      const double t_sparse = wA * (tA + t_sel) + (1 - wA) * tB;
      // work actually done (useful pairs x 4 D per query head)
      double pairs_str = 0;
      for (int64_t i = 0; i < N; ++i) pairs_str += double(std::min<int64_t>(i + 1, sink)) + double(std::min<int64_t>(std::max<int64_t>(i + 1 - sink, 0), window));
      auto cnt = lists.counts.cpu();
      double pairs_ret = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const double nq = double(std::min<int64_t>(N, (b + 1) * B) - b * B);
        pairs_ret += (cnt[0][b].item<int>() - 1) * B * nq + nq * (nq + 1) / 2;
      }
      const double flopA = 4.0 * D * G * (pairs_ret + 3 * pairs_str), flopB = 4.0 * D * G * 4 * pairs_str;
      const double tflops = (wA * flopA + (1 - wA) * flopB) / ((wA * tA + (1 - wA) * tB) * 1e-3) / 1e12;
      // recall on sampled queries of the retrieval group: indexer mass and true attention mass
      double rec_idx = 0, rec_att = 0;
      {
        auto idxl = lists.indices.cpu();
        const int ns = 64;
        std::mt19937_64 rng(5);
        for (int s = 0; s < ns; ++s) {
          const int64_t i = int64_t(rng() % uint64_t(N));
          const int h = int(rng() % G);
          const int64_t b = i / B;
          auto sel = torch::zeros({nb}, torch::kBool);
          for (int n = 0; n < cnt[0][b].item<int>(); ++n) sel[idxl[0][b][n].item<int>()] = true;
          auto keep = sel.cuda().index_select(0, torch::floor_divide(torch::arange(i + 1, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kLong)), B));
          auto si = torch::mv(pl.ik[0].narrow(0, 0, i + 1).to(torch::kFloat), pl.iq[0][h][i].to(torch::kFloat)) / 4.0;
          rec_idx += (torch::softmax(si, 0) * keep).sum().item<double>();
          auto sa = torch::mv(k[0].narrow(0, 0, i + 1).to(torch::kFloat), q[h][i].to(torch::kFloat)) / std::sqrt(double(D));
          rec_att += (torch::softmax(sa, 0) * keep).sum().item<double>();
        }
        rec_idx /= ns, rec_att /= ns;
      }
      // baselines
      double t_fa2 = 0, t_cud = 0;
      bool extrap = N > bmax;
      if (bmax == 0) {  // sparse path only (profiling): no baseline, no speedup
        t_fa2 = t_cud = NAN;
        extrap = false;
      } else if (!extrap) {
        auto q4 = q.unsqueeze(0), k4 = k.unsqueeze(0), v4 = v.unsqueeze(0);
        // One dense 1M call takes 17-28 s: one warm-up and one timed call each there.
        const int br = N >= 1048576 ? 1 : N >= 262144 ? 2 : reps;
        std::string note;
        t_fa2 = time_baseline("fa2", k4, v4, G, [&](const torch::Tensor& kk, const torch::Tensor& vv) {
          at::_scaled_dot_product_flash_attention(q4, kk, vv, 0.0, true); }, 1, br, &note);
        t_cud = time_baseline("cudnn", k4, v4, G, [&](const torch::Tensor& kk, const torch::Tensor& vv) {
          at::_scaled_dot_product_cudnn_attention(q4, kk, vv, std::nullopt, false, 0.0, true); }, 1, br, &note);
        R["baseline_note"] = note;
        base_fa2_ms = t_fa2, base_cud_ms = t_cud, base_len = N;
      } else {
        RTP_CHECK(base_len > 0, "no measured baseline to extrapolate from");
        const double f = double(N) * N / (double(base_len) * base_len);
        t_fa2 = base_fa2_ms * f, t_cud = base_cud_ms * f;
      }
      R["kappa"] = kappa;
      R["retrieval_density"] = dens;
      R["target_density"] = target_density(N);
      R["select_ms"] = t_sel;
      R["attn_layer_with_retrieval_ms"] = tA;
      R["attn_layer_streaming_only_ms"] = tB;
      R["sparse_ms"] = t_sparse;
      R["selection_share"] = wA * t_sel / t_sparse;
      R["fa2_ms"] = t_fa2;
      R["cudnn_ms"] = t_cud;
      R["baselines_extrapolated"] = extrap;
      R["speedup_vs_fa2"] = t_fa2 / t_sparse;
      R["speedup_vs_cudnn"] = t_cud / t_sparse;
      R["tflops_kept_work"] = tflops;
      R["fa2_tflops"] = 393216.0 * N * N / 48 / (t_fa2 * 1e-3) / 1e12;
      R["cudnn_tflops"] = 393216.0 * N * N / 48 / (t_cud * 1e-3) / 1e12;
      R["recall_indexer_mass"] = rec_idx;
      R["recall_attention_mass"] = rec_att;
      J["prefill"].push_back(R);
      if (R.contains("baseline_note") && !R["baseline_note"].get<std::string>().empty())
        std::printf("note: %s\n", R["baseline_note"].get<std::string>().c_str());
      char line[512];
      std::snprintf(line, sizeof line, "%8ld %9.2f %9.2f %8.2f %9.1f%s %9.1f %6.2fx %6.2fx %6.0f %6.1f%% %5.3f %5.3f %5.3f",
                    long(N), t_sparse, t_sel, tA, t_fa2, extrap ? "*" : " ", t_cud, t_fa2 / t_sparse, t_cud / t_sparse,
                    tflops, 100 * wA * t_sel / t_sparse, dens, rec_idx, rec_att);
      rows.push_back(line);
      std::printf("%s\n", line);
      std::fflush(stdout);
    }
    // decode
    std::vector<std::string> drows;
    kernels::DecodeTuning tuning;
    tuning.v2_attend = args["decode-attend-v2"].as<bool>();
    tuning.programmatic_launch = !args["decode-no-pdl"].as<bool>();
    tuning.streaming_keys_per_block = streaming_keys;
    tuning.retrieval_candidates_per_block = retrieval_candidates;
    tuning.index_rows_per_thread = index_rows;
    tuning.index_tokens_per_block = index_tokens;
    tuning.hist_tokens_per_block = hist_tokens;
    tuning.shared_carveout = carveout;
    tuning.attend_tile_stages = tile_stages;
    tuning.index_tensor_cores = !args["decode-index-fma"].as<bool>();
    tuning.bstar_in_attend = !args["decode-bstar-in-hist"].as<bool>();
    // The rest of a Qwen3-30B-A3B layer around the attention (projections, norms, router, 8 experts): the same for
    // every KV length, so timed once; a whole-layer decode step is this plus the layer's attention.
    const bench::MoeLayerDecode layer_rest(bench::MoeLayerShape{}, 11);
    auto x_tok = torch::randn({1, 2048}, bf), attn_tok = torch::randn({1, Hq * D}, bf);
    const double t_rest = time_ms([&] { layer_rest.run(x_tok, attn_tok); }, 5, 50);
    {
      // The two formulations must agree before either is timed.
      auto a = layer_rest.run(x_tok, attn_tok).to(torch::kFloat32), b = layer_rest.run_device_routed(x_tok, attn_tok).to(torch::kFloat32);
      const double diff = (a - b).abs().max().item<double>(), scale = a.abs().max().item<double>();
      RTP_CHECK(diff <= 0.02 * scale + 1e-3, "MoE layer: device-routed step differs from the expert loop by ", diff,
                " (max |out| ", scale, ")");
    }
    std::string rest_note;
    const double g_rest = time_graph_ms("layer rest", [&] { layer_rest.run_device_routed(x_tok, attn_tok); }, 50,
                                        &rest_note);
    J["decode_layer_rest"] = {{"us", t_rest * 1e3}, {"graph_device_routed_us", g_rest * 1e3},
                              {"weight_bytes", layer_rest.weight_bytes()}, {"note", rest_note},
                              {"what", "one Qwen3-30B-A3B decoder layer without its attention, one token: eager with "
                                       "the model's expert loop (top-8 indices read on the host); graph: routing on "
                                       "the GPU, experts gathered by index_select + bmm, replayed from a CUDA graph"}};
    for (int64_t L : decode_lengths) {
      double dkappa = kappa_fixed > 0 ? kappa_fixed : 10.0;
      Planted pl = plant_index(L, G, B, dkappa, 9);
      auto qd = torch::randn({Hq, D}, bf);
      auto kf = torch::randn({1, L, D}, bf), vf = torch::randn({1, L, D}, bf);
      auto kr = torch::randn({4, sink + window, D}, bf), vr = torch::randn({4, sink + window, D}, bf);
      auto iqd = pl.iq[0].select(1, L - 1).unsqueeze(0).contiguous();  // [1, G, 16]
      auto od = torch::empty_like(qd);
      auto sel = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kInt32));
      torch::Tensor ws;  // decode scratch, allocated once per length (as a serving loop would)
      // One layer's decode inputs; the decode-step measurement gives every layer its own copies.
      struct LayerInputs {
        torch::Tensor q, kf, vf, kr, vr, iq, ik, o;
      };
      auto dec_layer = [&](bool with_ret, const LayerInputs& in) {
        HeadKind kA[4] = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING};
        HeadKind kB[4] = {HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING, HeadKind::STREAMING};
        kernels::SparseDecodeParams p;
        p.q = in.q.data_ptr(), p.o = in.o.data_ptr(), p.dtype = kernels::DType::BF16;
        p.k_full = in.kf.data_ptr(), p.v_full = in.vf.data_ptr(), p.cap_full = L;
        p.k_ring = in.kr.data_ptr(), p.v_ring = in.vr.data_ptr();
        p.index_q = in.iq.data_ptr(), p.index_k = in.ik.data_ptr(), p.index_dtype = kernels::DType::BF16;
        p.num_q_heads = int(Hq), p.num_kv_heads = int(Hkv), p.head_dim = int(D), p.kv_len = L;
        p.head_kind = with_ret ? kA : kB, p.sink = sink, p.window = window, p.top_p = 0.9f;
        p.selected_count = sel.data_ptr<int32_t>();
        p.tuning = tuning;
        const char* bad = kernels::check_sparse_decode_params(p, true);
        RTP_CHECK(!*bad, "decode parameters: ", bad, " (--decode-streaming-keys, --decode-retrieval-candidates)");
        const size_t need = kernels::sparse_decode_workspace_bytes(p);
        if (!ws.defined() || static_cast<size_t>(ws.numel()) < need)
          ws = torch::empty({static_cast<int64_t>(need)}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kUInt8));
        p.workspace = ws.data_ptr(), p.workspace_bytes = static_cast<size_t>(ws.numel());
        ck(kernels::sparse_decode_cuda(p, c10::cuda::getCurrentCUDAStream()), "sparse_decode_cuda");
      };
      auto dec = [&](bool with_ret) { dec_layer(with_ret, LayerInputs{qd, kf, vf, kr, vr, iqd, pl.ik, od}); };
      // The paper keeps ~3% of the tokens at 128K; kappa 10 kept 15% (too flat a planted structure, so the
      // retrieval head gathered 5x the keys a real model would). Bisection on kappa: sharper keeps fewer.
      auto kept = [&] {
        dec(true);
        return sel.cpu()[0].item<int>() / double(L);
      };
      double kept_frac = kept();
      if (kappa_fixed <= 0) {
        double lo = 1, hi = 400;
        for (int it = 0; it < 12 && std::fabs(kept_frac / kept_target - 1) > 0.1; ++it) {
          if (kept_frac > kept_target) lo = dkappa;
          else hi = dkappa;
          dkappa = std::sqrt(lo * hi);
          pl = plant_index(L, G, B, dkappa, 9);
          iqd = pl.iq[0].select(1, L - 1).unsqueeze(0).contiguous();
          kept_frac = kept();
        }
      }
      const double tA = time_ms([&] { dec(true); }, 5, 50), tB = time_ms([&] { dec(false); }, 5, 50);
      const double ts = wA * tA + (1 - wA) * tB;
      auto q4 = qd.view({1, Hq, 1, D});
      auto kd = torch::randn({1, Hkv, L, D}, bf), vd = torch::randn({1, Hkv, L, D}, bf);
      std::string note;
      const double tf = time_baseline("fa2", kd, vd, G, [&](const torch::Tensor& kk, const torch::Tensor& vv) {
        at::_scaled_dot_product_flash_attention(q4, kk, vv, 0.0, false); }, 5, 50, &note);
      const double tc = time_baseline("cudnn", kd, vd, G, [&](const torch::Tensor& kk, const torch::Tensor& vv) {
        at::_scaled_dot_product_cudnn_attention(q4, kk, vv, std::nullopt, false, 0.0, false); }, 5, 50, &note);
      // The same calls replayed from CUDA graphs (native GQA for the baselines).
      const double gA = time_graph_ms("sparse", [&] { dec(true); }, 50, &note);
      const double gB = time_graph_ms("sparse", [&] { dec(false); }, 50, &note);
      const double gs = wA * gA + (1 - wA) * gB;
      json timeline;
      if (args["decode-timeline"].as<bool>()) {
        timeline = decode_timeline([&](bool with_ret, unsigned long long* tl) {
          tuning.timeline = tl;
          dec(with_ret);
          tuning.timeline = nullptr;
        });
        std::printf("%s\n", timeline["line"].get<std::string>().c_str());
      }
      const double gf = time_graph_ms("fa2", [&] { at::_scaled_dot_product_flash_attention(q4, kd, vd, 0.0, false); },
                                      50, &note);
      const double gc = time_graph_ms("cudnn", [&] {
        at::_scaled_dot_product_cudnn_attention(q4, kd, vd, std::nullopt, false, 0.0, false); }, 50, &note);
      // A decode step as a model runs it: step_layers consecutive layers in one graph, each with its own caches (so
      // no layer finds the previous one's keys in L2), the layers with a retrieval head spread evenly (wA of them).
      json step;
      std::string step_line;
      if (step_layers > 0) {
        std::vector<LayerInputs> layers;
        std::vector<torch::Tensor> kds, vds;
        std::vector<bool> with_ret;
        for (int i = 0; i < step_layers; ++i) {
          layers.push_back({qd.clone(), kf.clone(), vf.clone(), kr.clone(), vr.clone(), iqd.clone(), pl.ik.clone(),
                            torch::empty_like(od)});
          kds.push_back(kd.clone());
          vds.push_back(vd.clone());
          with_ret.push_back(std::floor((i + 1) * wA + 1e-9) > std::floor(i * wA + 1e-9));
        }
        const int n_ret = int(std::count(with_ret.begin(), with_ret.end(), true));
        const double ss = time_graph_ms("sparse step", [&] {
          for (int i = 0; i < step_layers; ++i) dec_layer(with_ret[i], layers[i]); }, 20, &note) / step_layers;
        const double sf = time_graph_ms("fa2 step", [&] {
          for (int i = 0; i < step_layers; ++i) at::_scaled_dot_product_flash_attention(q4, kds[i], vds[i], 0.0, false);
        }, 20, &note) / step_layers;
        const double sc = time_graph_ms("cudnn step", [&] {
          for (int i = 0; i < step_layers; ++i)
            at::_scaled_dot_product_cudnn_attention(q4, kds[i], vds[i], std::nullopt, false, 0.0, false);
        }, 20, &note) / step_layers;
        step = {{"layers", step_layers}, {"layers_with_retrieval", n_ret}, {"sparse_us_per_layer", ss * 1e3},
                {"fa2_us_per_layer", sf * 1e3}, {"cudnn_us_per_layer", sc * 1e3}, {"speedup_vs_fa2", sf / ss},
                {"speedup_vs_cudnn", sc / ss},
                {"what", "one CUDA graph of consecutive layers with their own caches, time per layer"}};
        char buf[300];
        std::snprintf(buf, sizeof buf, "%8ld   decode step of %d layers (%d with a retrieval head), one graph, own caches: "
                      "sparse %.1f, FA2 %.1f, cuDNN %.1f us per layer, %.2fx FA2, %.2fx cuDNN",
                      long(L), step_layers, n_ret, ss * 1e3, sf * 1e3, sc * 1e3, sf / ss, sc / ss);
        step_line = buf;
      }
      json R{{"L", L}, {"sparse_us", ts * 1e3},
             {"graph_sparse_us", gs * 1e3}, {"graph_layer_with_retrieval_us", gA * 1e3},
             {"graph_streaming_only_us", gB * 1e3}, {"graph_fa2_us", gf * 1e3}, {"graph_cudnn_us", gc * 1e3},
             {"graph_speedup_vs_fa2", gf / gs}, {"graph_speedup_vs_cudnn", gc / gs}, {"layer_with_retrieval_us", tA * 1e3}, {"streaming_only_us", tB * 1e3},
             {"fa2_us", tf * 1e3}, {"cudnn_us", tc * 1e3}, {"speedup_vs_fa2", tf / ts}, {"speedup_vs_cudnn", tc / ts},
             {"retrieval_selected_tokens", sel.cpu()[0].item<int>()}, {"baseline_note", note},
             {"decode_kappa", dkappa}, {"retrieval_kept_fraction", kept_frac}, {"retrieval_kept_target", kappa_fixed > 0 ? NAN : kept_target},
             {"whole_layer_sparse_us", (t_rest + ts) * 1e3}, {"whole_layer_fa2_us", (t_rest + tf) * 1e3},
             {"whole_layer_cudnn_us", (t_rest + tc) * 1e3}, {"whole_layer_speedup_vs_fa2", (t_rest + tf) / (t_rest + ts)},
             {"whole_layer_speedup_vs_cudnn", (t_rest + tc) / (t_rest + ts)},
             {"graph_whole_layer_sparse_us", (g_rest + gs) * 1e3}, {"graph_whole_layer_fa2_us", (g_rest + gf) * 1e3},
             {"graph_whole_layer_cudnn_us", (g_rest + gc) * 1e3},
             {"graph_whole_layer_speedup_vs_fa2", (g_rest + gf) / (g_rest + gs)},
             {"graph_whole_layer_speedup_vs_cudnn", (g_rest + gc) / (g_rest + gs)}};
      if (!timeline.is_null()) R["timeline"] = timeline;
      if (!step.is_null()) R["graph_decode_step"] = step;
      J["decode"].push_back(R);
      char line[400];
      std::snprintf(line, sizeof line, "%8ld %8.1f %8.1f %8.1f %8.1f %6.2fx %6.2fx %8d %5.1f%% | %8.1f %8.1f %8.1f %8.1f %8.1f %6.2fx %6.2fx",
                    long(L), ts * 1e3, tA * 1e3, tf * 1e3, tc * 1e3, tf / ts, tc / ts, sel.cpu()[0].item<int>(),
                    100 * kept_frac, gs * 1e3, gA * 1e3, gB * 1e3, gf * 1e3, gc * 1e3, gf / gs, gc / gs);
      drows.push_back(line);
      std::printf("%s\n", line);
      if (!step_line.empty()) {
        drows.push_back(step_line);
        std::printf("%s\n", step_line.c_str());
      }
    }
    char stamp[32];
    std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", std::gmtime(&now));
    const std::string path = out_dir + "/bench-" + stamp + ".json";
    // Atomically (a temporary file renamed into place), and "wrote" only once it is there: a failed write throws.
    make_directories(out_dir);
    write_json_atomic(path, J);
    std::printf("\ncard %s, driver %d, commit %s\n", prop.name, drv, rtp::tools::commit_id().c_str());
    std::printf("prefill (ms per layer; * = baseline extrapolated as N^2)\n%8s %9s %9s %8s %10s %9s %7s %7s %6s %7s %5s %5s %5s\n", "N",
                "sparse", "select", "attnA", "FA2", "cuDNN", "vsFA2", "vsCUDNN", "TF/s", "selpct", "dens", "rIdx", "rAtt");
    for (auto& r : rows) std::printf("%s\n", r.c_str());
    // Right of |, every column but the last two is a time in us; the speedups are g.FA2 / g.sparse and
    // g.cuDNN / g.sparse (the row format once had one time column too few, so g.cuDNN printed as a speedup).
    std::printf("decode (us per layer; right of | replayed from CUDA graphs; kept = retrieval head's selected fraction)\n"
                "%8s %8s %8s %8s %8s %7s %7s %8s %6s | %8s %8s %8s %8s %8s %7s %7s\n",
                "L", "sparse", "withRet", "FA2", "cuDNN", "vsFA2", "vsCUDNN", "selTok", "kept", "g.sparse", "g.withRet",
                "g.strOnly", "g.FA2", "g.cuDNN", "g.vsFA2", "g.vsCUD");
    for (auto& r : drows) std::printf("%s\n", r.c_str());
    std::printf("whole layer (us): the rest of the layer %.1f eager (host-routed expert loop), %.1f from a graph "
                "(device-routed; weights %.1f MB: %.1f us at 3 TB/s), plus the attention\n",
                t_rest * 1e3, g_rest * 1e3, layer_rest.weight_bytes() / 1e6, layer_rest.weight_bytes() / 3e12 * 1e6);
    for (const auto& R : J["decode"])
      std::printf("%8lld  eager: sparse %7.1f  FA2 %7.1f  vsFA2 %5.2fx | graph: sparse %7.1f  FA2 %7.1f  cuDNN %7.1f  "
                  "vsFA2 %5.2fx  vsCUDNN %5.2fx\n",
                  static_cast<long long>(R["L"].get<int64_t>()), R["whole_layer_sparse_us"].get<double>(),
                  R["whole_layer_fa2_us"].get<double>(), R["whole_layer_speedup_vs_fa2"].get<double>(),
                  R["graph_whole_layer_sparse_us"].get<double>(), R["graph_whole_layer_fa2_us"].get<double>(),
                  R["graph_whole_layer_cudnn_us"].get<double>(), R["graph_whole_layer_speedup_vs_fa2"].get<double>(),
                  R["graph_whole_layer_speedup_vs_cudnn"].get<double>());
    std::printf("wrote %s\n", path.c_str());
    return 0;
  });
}
