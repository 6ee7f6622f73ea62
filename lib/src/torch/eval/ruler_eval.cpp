#include "rtp/eval/ruler_eval.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/eval/resume_settings.h"
#include "rtp/eval/ruler_report.h"
#include "rtp/model/decode_stepper.h"
#include "rtp/model/model_config.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/sparse_cache.h"
#include "rtp/text/ruler.h"
#include "rtp/text/utf8.h"

namespace rtp::eval {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> parse_ruler_tasks(const std::string& spec) {
  std::vector<std::string> out;
  std::stringstream ss(spec);
  const auto& valid = text::ruler::task_names();
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.rfind("ruler:", 0) == 0) item = item.substr(6);
    if (item.empty()) continue;
    RTP_CHECK(std::find(out.begin(), out.end(), item) == out.end(), "ruler:", item,
              " is listed twice: expected each task once (each is evaluated at every length)");
    if (std::find(valid.begin(), valid.end(), item) == valid.end()) {
      std::string list;
      for (const auto& v : valid) list += (list.empty() ? "ruler:" : ", ruler:") + v;
      RTP_THROW("unknown task '", item, "': expected ", list);
    }
    out.push_back(item);
  }
  RTP_CHECK(!out.empty(), "no task named: expected e.g. ruler:niah_single_1,ruler:vt");
  return out;
}

namespace {

struct Generated {
  std::vector<int32_t> tokens;
  double prefill_s = 0, decode_s = 0;
  int64_t kv_bytes = 0;
  std::vector<double> layer_fraction;   // sparse: the prompt prefill's attended / causal pairs per layer
  std::vector<int64_t> layer_kv_bytes;  // sparse: cache bytes per layer
};

std::vector<int32_t> tail_tokens(const torch::Tensor& out, int64_t from) {
  const auto t = out.select(0, 0).narrow(0, from, out.size(1) - from).to(torch::kInt32).contiguous();
  return std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + t.numel());
}

// One cache and one decode stepper per model, kept across samples: a cache is cleared (its buffers stay), so the
// stepper's graphs, which store each token into those buffers, are captured once per cache instead of once per sample
// (23-63 ms on an H200, against ~0.1 s of decoding for a 30-token answer). A sample that needs more room gets a new
// cache (and the stepper captures again).
struct DenseDecoder {
  std::unique_ptr<model::KVCache> cache;
  int64_t capacity = 0;
  std::unique_ptr<model::DecodeStepper> stepper;
};
struct SparseDecoder {
  std::unique_ptr<sparse::SparseCache> cache;
  std::unique_ptr<model::DecodeStepper> stepper;
};

// The dense model through its KV cache: as model::generate_greedy, with the prefill and the decode timed apart.
Generated generate_dense(model::Qwen3Model& m, DenseDecoder& d, const torch::Tensor& prompt, int64_t n, int64_t chunk,
                         const std::vector<int64_t>& stops, bool graphs) {
  Generated g;
  torch::NoGradGuard no_grad;
  const int64_t P = prompt.size(1);
  if (!d.cache || d.capacity < P + n) {
    d.cache = std::make_unique<model::KVCache>(m.config().num_hidden_layers);
    d.cache->reserve(P + n);
    d.capacity = P + n;
  } else {
    d.cache->clear();
  }
  if (!d.stepper) d.stepper = std::make_unique<model::DecodeStepper>(m, graphs);
  model::ForwardOptions o;
  o.cache = d.cache.get();
  auto t0 = std::chrono::steady_clock::now();
  const auto logits = model::prefill_chunked(m, *d.cache, prompt, chunk);
  if (logits.is_cuda()) torch::cuda::synchronize();  // the prefill's own time, not queued work
  auto t1 = std::chrono::steady_clock::now();
  g.tokens = tail_tokens(model::greedy_continue(*d.stepper, logits, n, stops, [&] { return o; }), 0);
  g.prefill_s = std::chrono::duration<double>(t1 - t0).count();
  g.decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  g.kv_bytes = d.cache->bytes();  // the tokens it holds, as the sparse cache counts them (the last one is not fed)
  return g;
}

Generated generate_sparse(sparse::ConvertedModel& cm, SparseDecoder& d, const torch::Tensor& prompt, int64_t n,
                          int64_t chunk, const std::vector<int64_t>& stops, bool graphs) {
  Generated g;
  torch::NoGradGuard no_grad;
  if (!d.cache || d.cache->capacity() < prompt.size(1) + n) {
    d.cache.reset();  // first: the old buffers go before the new ones are allocated
    d.cache = std::make_unique<sparse::SparseCache>(cm.model.config(), cm.heads, cm.settings,
                                                    cm.indexer.named_parameters().empty() ? nullptr : &cm.indexer,
                                                    prompt.size(1) + n, cm.model.device(), cm.model.dtype());
  } else {
    d.cache->clear();
  }
  if (!d.stepper) d.stepper = std::make_unique<model::DecodeStepper>(cm.model, graphs);
  auto& cache = *d.cache;
  auto t0 = std::chrono::steady_clock::now();
  auto logits = sparse::prefill_chunked(cm.model, cache, prompt, chunk);
  if (logits.is_cuda()) torch::cuda::synchronize();  // the prefill's own time, not queued work
  auto t1 = std::chrono::steady_clock::now();
  g.tokens = tail_tokens(model::greedy_continue(*d.stepper, logits, n, stops, [&] { return cache.options(); }), 0);
  g.prefill_s = std::chrono::duration<double>(t1 - t0).count();
  g.decode_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  g.kv_bytes = cache.bytes();
  const auto& st = cache.prefill_stats();
  for (int64_t l = 0; l < cm.model.config().num_hidden_layers; ++l) {
    g.layer_kv_bytes.push_back(cache.layer_bytes(l));
    double att = 0, causal = 0;
    if (static_cast<size_t>(l) < st.head_attended.size())
      for (size_t h = 0; h < st.head_attended[l].size(); ++h) att += st.head_attended[l][h], causal += st.head_causal[l][h];
    g.layer_fraction.push_back(causal > 0 ? att / causal : 1.0);
  }
  return g;
}

// What makes two evaluations the same one: what the prompts are made of (tokenizer, tasks, lengths, samples, seed,
// essay) and what answers them (model, which models, prefill chunk, device type, dtype). Paths absolute, so that the
// same file named from another directory matches; beside each, a fingerprint of what it holds (a model re-exported in
// place is another model). Not here: what changes no answer (CUDA graphs or eager, where the
// prompts are dumped, --stop-after).
json ruler_settings(const RulerEvalOptions& o, const std::string& tokenizer, const RunContext& ctx) {
  return {{"model", absolute_setting_path(o.model_dir)},
          {"model_contents", contents_fingerprint(o.model_dir)},
          {"tokenizer", absolute_setting_path(tokenizer)},
          {"tokenizer_contents", contents_fingerprint(tokenizer)},
          {"tasks", o.tasks},
          {"lengths", o.lengths},
          {"samples", o.samples},
          {"seed", ctx.seed},
          {"dense", o.dense},
          {"sparse", o.sparse},
          {"prefill_chunk", o.prefill_chunk},
          {"device", ctx.device.is_cuda() ? "cuda" : "cpu"},
          {"dtype", dtype_name(ctx.dtype)},
          {"essay", absolute_setting_path(o.essay_file)},
          {"essay_contents", contents_fingerprint(o.essay_file)}};
}

// What an unfinished ruler.json holds: the (task, length) rows done and the row under way (null if none).
struct RulerProgress {
  json rows = json::array();
  json in_progress;
};

std::string describe_progress(const json& doc) {
  std::string d = std::to_string(doc.value("results", json::array()).size()) + " (task, length) rows done";
  if (doc.contains("in_progress") && doc["in_progress"].is_object())
    d += ", " + std::to_string(doc["in_progress"].value("per_sample", json::array()).size()) + " samples of " +
         doc["in_progress"].value("task", std::string("?")) + " @" + std::to_string(doc["in_progress"].value("length", int64_t{0}));
  return d;
}

// Without --resume: an unfinished evaluation in the way is an error that says what to do (a finished one is replaced,
// so that rerunning a command works). With --resume: the file must hold an unfinished evaluation of these settings.
RulerProgress load_progress(const std::string& path, const json& settings, bool resume) {
  const bool exists = file_exists(path);
  if (!resume) {
    if (exists) {
      const json doc = read_json_file(path);
      RTP_CHECK(doc.value("finished", true), "'", path, "' holds an evaluation that did not finish (",
                describe_progress(doc), "): pass --resume to continue it, or choose another --out-dir (or remove '",
                path, "')");
    }
    return {};
  }
  RTP_CHECK(exists, "--resume: '", path, "' does not exist: there is no evaluation to continue in this --out-dir (run ",
            "without --resume to start one)");
  const json doc = read_json_file(path);
  RTP_CHECK(!doc.value("finished", false), "--resume: '", path, "' holds a finished evaluation: nothing to continue ",
            "(run without --resume to evaluate again)");
  RTP_CHECK(doc.contains("settings") && doc["settings"].is_object(), "--resume: '", path, "' was written without its ",
            "settings (by an older rtpurbo-eval) and cannot be continued: run without --resume in another --out-dir, ",
            "or remove it");
  require_same_settings(path, doc["settings"], settings);
  RulerProgress p;
  p.rows = doc.value("results", json::array());
  if (doc.contains("in_progress")) p.in_progress = doc["in_progress"];
  std::cerr << "resuming '" << path << "': " << describe_progress(doc) << "\n";
  return p;
}

}  // namespace

void run_ruler_eval(const RulerEvalOptions& o, const RunContext& ctx) {
  RTP_CHECK(!o.lengths.empty() && o.samples > 0, "ruler eval needs --lengths and a positive --samples");
  // Without either model ruler.json would hold no scores (and its report nothing to plot). rtpurbo-eval gets here
  // with --dense --sparse together: each means "only this one".
  RTP_CHECK(o.model_dir.empty() || o.dense || o.sparse, "ruler eval has neither the dense nor the sparse model to ",
            "evaluate: expected one of --dense (only), --sparse (only) or --both");
  if (!o.model_dir.empty()) {
    // Before the tokenizer (which defaults to the model's) and before any prompt is built: a missing model is
    // named as such, and a length the model cannot take fails now rather than after minutes of prefill.
    require_directory(o.model_dir, "model directory");
    const model::ModelConfig mc = model::load_model_config(o.model_dir + "/config.json");
    for (int64_t len : o.lengths) model::check_fits_positions(mc, len, "length");
  }
  std::string tok_path = o.tokenizer.empty() ? o.model_dir : o.tokenizer;
  RTP_CHECK(!tok_path.empty(), "ruler eval needs --tokenizer DIR (or --model DIR holding tokenizer.json)");
  // A model without a tokenizer is most often a token-id model such as the shipped toy, which has its own task.
  RTP_CHECK(!o.tokenizer.empty() || file_exists(o.model_dir + "/tokenizer.json"), "model directory '", o.model_dir,
            "' has no tokenizer.json, and RULER prompts are text: give the model's tokenizer with --tokenizer DIR (a ",
            "token-id model such as the shipped toy is evaluated with --task toy)");
  auto tok = text::Tokenizer::from_file(tok_path);
  text::ruler::RulerOptions ro;
  ro.seed = ctx.seed;
  if (!o.essay_file.empty()) {
    ro.essay_text = read_text_file(o.essay_file);
    // Named here by file and offset in it; inside a prompt the offset would be the prompt's.
    text::utf8_check(ro.essay_text, "--essay '" + o.essay_file + "'");
    RTP_CHECK(ro.essay_text.find_first_not_of(" \t\n\r\f\v") != std::string::npos, "--essay '", o.essay_file,
              "' holds no words: the essay haystack is made of its words (give a plain-text file with some)");
  }
  // Checked before any model work: an essay task later in the list failed only after the tasks before it had run.
  for (const auto& task : o.tasks)
    RTP_CHECK(!text::ruler::task_needs_essay(task) || !o.essay_file.empty(), "RULER task '", task,
              "' needs an essay haystack: give a plain-text file with --essay (e.g. essays.txt)");
  // Every (task, length) must fit before any model work: a length too short for a later task failed only when its
  // turn came, after the tasks before it had run.
  for (int64_t len : o.lengths) {
    ro.max_seq_length = len;
    for (const auto& task : o.tasks) {
      try {
        text::ruler::require_fits(task, tok, ro);
      } catch (const Error& e) {
        RTP_THROW(e.what(), ": give --lengths of at least what every task in --tasks needs, or leave the task out");
      }
    }
  }

  // Whether there is an evaluation to continue (or one in the way), before the model loads.
  RTP_CHECK(!o.model_dir.empty() || !o.resume, "--resume continues an evaluation and needs --model (the prompts alone ",
            "are written in one go)");
  const std::string results_path = (fs::path(o.out_dir) / "ruler.json").string();
  const json settings = ruler_settings(o, tok_path, ctx);
  RulerProgress prior = o.model_dir.empty() ? RulerProgress{} : load_progress(results_path, settings, o.resume);

  std::unique_ptr<sparse::ConvertedModel> cm;
  if (!o.model_dir.empty()) {
    RTP_CHECK(sparse::is_converted_model_dir(o.model_dir) || !o.sparse, "'", o.model_dir, "' is not a converted model ",
              "(no rtpurbo.json): evaluate it with --dense, or convert it with rtpurbo-export first");
    if (sparse::is_converted_model_dir(o.model_dir)) {
      cm = std::make_unique<sparse::ConvertedModel>(sparse::load_converted(o.model_dir, ctx.device, ctx.dtype));
    } else {
      cm = std::make_unique<sparse::ConvertedModel>(sparse::ConvertedModel{
          model::load_qwen3(o.model_dir, ctx.device, ctx.dtype), sparse::HeadMap{}, sparse::SparseSettings{}, sparse::Indexer{}});
    }
    RTP_CHECK(cm->model.config().vocab_size >= tok.vocab_size(), "model '", o.model_dir, "' has vocab_size ",
              cm->model.config().vocab_size, " but the tokenizer '", tok_path, "' has ", tok.vocab_size(),
              " tokens: they do not belong together");
    // What the sparse path would refuse, refused before the dense model has run.
    if (o.sparse) {
      RTP_CHECK(cm->heads.count_retrieval() == 0 || !cm->indexer.named_parameters().empty(), "converted model '",
                o.model_dir, "' has ", cm->heads.count_retrieval(), " retrieval KV heads but no indexer.safetensors: ",
                "export it with rtpurbo-export --indexer CKPT, or evaluate only the dense model (--dense)");
      RTP_CHECK(o.prefill_chunk <= 0 || o.prefill_chunk % cm->settings.block_size == 0, "--prefill-chunk ",
                o.prefill_chunk, " is not a multiple of the converted model's block size ", cm->settings.block_size,
                ": expected a multiple (e.g. ", std::max<int64_t>(1, o.prefill_chunk / cm->settings.block_size) *
                cm->settings.block_size, ") or 0 for one forward per prompt");
    }
  }
  // Generation ends at the checkpoint's end-of-sequence tokens, as transformers' generate() does.
  const std::vector<int64_t> stop_ids = cm ? model::load_stop_token_ids(o.model_dir) : std::vector<int64_t>{};
  std::string dump;
  json results = prior.rows;
  const size_t rows_done = results.size();
  DenseDecoder dense_decoder;
  SparseDecoder sparse_decoder;
  // ruler.json after every sample, so that a run stopped later keeps what it measured ("finished": false, the row under
  // way as "in_progress") and --resume continues from there.
  const std::string report_path = (fs::path(o.out_dir) / "report.html").string();
  bool replaced = false;
  auto write_results = [&](bool finished, const json* in_progress) {
    make_directories(o.out_dir);
    // The report beside the ruler.json this run replaces shows that evaluation, not this one: gone with it.
    if (!replaced) remove_tree(report_path);
    replaced = true;
    json doc = {{"model", o.model_dir},  {"seed", ctx.seed},          {"samples", o.samples},
                {"finished", finished},  {"stop_token_ids", stop_ids},
                {"cuda_graphs", o.cuda_graphs && ctx.device.is_cuda()}, {"settings", settings}, {"results", results}};
    if (in_progress) doc["in_progress"] = *in_progress;
    write_json_atomic(results_path, doc);
    return doc;
  };
  int64_t evaluated = 0;  // samples this invocation evaluated (--stop-after)
  bool stopped = false;
  size_t row_index = 0;
  for (const auto& task : o.tasks)
    for (int64_t len : o.lengths) {
      if (stopped) break;
      // A row the resumed file holds: kept as it is; its prompts are still made when they are to be dumped.
      const bool row_done = row_index++ < rows_done;
      if (row_done && o.dump_prompts.empty()) continue;
      ro.max_seq_length = len;
      json row = {{"task", task}, {"length", len}};
      double dense_sum = 0, sparse_sum = 0;
      int64_t first = 0;  // the first sample to evaluate
      if (!row_done && prior.in_progress.is_object() && prior.in_progress.value("task", std::string()) == task &&
          prior.in_progress.value("length", int64_t{-1}) == len) {
        row = prior.in_progress;
        for (const auto& out : row.value("per_sample", json::array())) {
          dense_sum += out.value("dense_score", 0.0);
          sparse_sum += out.value("sparse_score", 0.0);
          ++first;
        }
        prior.in_progress = json();
      }
      for (int64_t i = 0; i < o.samples; ++i) {
        auto s = text::ruler::generate_sample(task, tok, ro, i);
        if (!o.dump_prompts.empty())
          dump += json({{"task", task}, {"length", len}, {"index", i}, {"input", s.prompt}, {"outputs", s.answers},
                        {"tokens_to_generate", s.tokens_to_generate}}).dump() + "\n";
        if (cm && (row_done || i < first)) continue;  // its answers are in the resumed ruler.json
        if (cm && o.stop_after_samples > 0 && evaluated == o.stop_after_samples) {
          stopped = true;
          break;
        }
        std::cerr << "ruler " << task << " @" << len << ": sample " << i + 1 << "/" << o.samples
                  << (cm ? "" : "\n");
        if (!cm) continue;
        try {
          // What each model answered, next to the references: the row's scores are the means of these.
          json out = {{"index", i}, {"answers", s.answers}};
          auto ids = torch::tensor(std::vector<int64_t>(s.prompt_ids.begin(), s.prompt_ids.end())).view({1, -1});
          // One progress line per sample: score, tokens, prefill time and decode time per token of each model.
          auto log_sample = [](const char* mode, const Generated& g, double score) {
            const auto n = static_cast<int64_t>(g.tokens.size());
            std::fprintf(stderr, "; %s %.2f, %lld tokens, prefill %.2f s, decode %.1f ms/token", mode, score,
                         static_cast<long long>(n), g.prefill_s, n > 1 ? 1e3 * g.decode_s / static_cast<double>(n - 1) : 0.0);
          };
          // Each model's answer: scored, logged, kept per sample, and summed into the row ("dense_..." / "sparse_...").
          auto record = [&](const std::string& mode, const Generated& g) {
            const std::string prediction = tok.decode(g.tokens, true);
            const double score = text::ruler::score(s, prediction);
            log_sample(mode.c_str(), g, score);
            out[mode + "_prediction"] = prediction;
            out[mode + "_score"] = score;
            row[mode + "_prefill_s"] = row.value(mode + "_prefill_s", 0.0) + g.prefill_s;
            row[mode + "_decode_s"] = row.value(mode + "_decode_s", 0.0) + g.decode_s;
            row[mode + "_generated_tokens"] =
                row.value(mode + "_generated_tokens", int64_t{0}) + static_cast<int64_t>(g.tokens.size());
            row[mode + "_kv_bytes"] = g.kv_bytes;  // the last sample's
            return score;
          };
          if (o.dense) {
            const auto g = generate_dense(cm->model, dense_decoder, ids, s.tokens_to_generate,
                                          o.prefill_chunk > 0 ? o.prefill_chunk : ids.size(1), stop_ids, o.cuda_graphs);
            dense_sum += record("dense", g);
            row["dense_time_s"] = row.value("dense_time_s", 0.0) + g.prefill_s + g.decode_s;  // older reports read it
          }
          if (o.sparse) {
            const auto g =
                generate_sparse(*cm, sparse_decoder, ids, s.tokens_to_generate, o.prefill_chunk, stop_ids, o.cuda_graphs);
            sparse_sum += record("sparse", g);
            row["sparse_kv_bytes_per_layer"] = g.layer_kv_bytes;
            row["sparse_attended_fraction_per_layer"] = g.layer_fraction;
          }
          row["per_sample"].push_back(out);
        } catch (...) {
          std::cerr << std::endl;  // the error goes on its own line, not after the sample's progress
          throw;
        }
        std::cerr << std::endl;
        ++evaluated;
        write_results(false, &row);
      }
      if (stopped || row_done) continue;
      // Decode time per generated token (the first token comes from the prefill's logits; every other is one step).
      for (const char* mode : {"dense", "sparse"}) {
        const std::string tk = std::string(mode) + "_generated_tokens", dk = std::string(mode) + "_decode_s";
        if (row.contains(tk) && row[tk].get<int64_t>() > o.samples)
          row[std::string(mode) + "_decode_ms_per_token"] = 1e3 * row[dk].get<double>() / static_cast<double>(row[tk].get<int64_t>() - o.samples);
      }
      if (cm && o.dense) row["dense_accuracy"] = dense_sum / o.samples;
      if (cm && o.sparse) row["sparse_accuracy"] = sparse_sum / o.samples;
      results.push_back(row);
      if (cm) write_results(false, nullptr);
    }
  if (stopped) {
    std::cerr << "stopped after " << evaluated << " samples (--stop-after); '" << results_path << "' holds "
              << describe_progress(read_json_file(results_path)) << ": continue with the same command and --resume"
              << (o.dump_prompts.empty() ? "" : " (the run that finishes writes --dump-prompts)") << "\n";
    return;
  }
  if (cm) {
    const std::string& path = results_path;
    const json doc = write_results(true, nullptr);
    write_file_atomic(report_path, render_ruler_report_html(doc, path));
    std::cout << "task               length   dense   sparse\n";
    for (const auto& r : results)
      std::printf("%-18s %6lld  %6s  %6s\n", r["task"].get<std::string>().c_str(), static_cast<long long>(r["length"].get<int64_t>()),
                  r.contains("dense_accuracy") ? std::to_string(r["dense_accuracy"].get<double>()).substr(0, 5).c_str() : "-",
                  r.contains("sparse_accuracy") ? std::to_string(r["sparse_accuracy"].get<double>()).substr(0, 5).c_str() : "-");
    std::cout << "results: " << path << "\nreport: " << report_path << "\n";
  }
  // After the results: a dump that cannot be written loses no measurement.
  if (!o.dump_prompts.empty()) {
    write_file_atomic(o.dump_prompts, dump);
    std::cerr << "wrote prompts to " << o.dump_prompts << "\n";
  }
}

}  // namespace rtp::eval
