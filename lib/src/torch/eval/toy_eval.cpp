#include "rtp/eval/toy_eval.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "rtp/core/error.h"
#include "rtp/core/human_units.h"
#include "rtp/core/file_io.h"
#include "rtp/data/toy_task.h"
#include "rtp/eval/html.h"
#include "rtp/eval/resume_settings.h"
#include "rtp/eval/report.h"
#include "rtp/model/model_config.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/sparse/indexer_training.h"
#include "rtp/sparse/sparse_attention.h"
#include "rtp/train/recipe.h"
#include "rtp/train/toy_data.h"

namespace rtp::eval {

namespace fs = std::filesystem;
using nlohmann::json;

using html::fmt;

namespace {

// The toy task the model was trained on. The only place that knows where that description lives: the
// pretrain stage writes rtpurbo_toy_task.json (its TrainConfig data fields) next to the model, and export
// copies it into the converted directory. Without it: the task's defaults with the model's vocabulary.
struct ToyTaskInfo {
  data::ToyTaskConfig config;
  int64_t seq_len = 1024;
  std::string source;
};
ToyTaskInfo toy_task_for(const std::string& model_dir, int64_t vocab_size) {
  ToyTaskInfo info;
  const std::string path = model_dir + "/rtpurbo_toy_task.json";
  train::TrainConfig tc;
  if (file_exists(path)) {
    const json j = read_json_file(path);
    RTP_CHECK(j.is_object() && j.contains("train_config") && j["train_config"].is_object(), "'", path,
              "': expected {\"train_config\": {...}} (written by rtpurbo-train --stage pretrain)");
    const auto& reg = train::train_config_registry();
    for (auto it = j["train_config"].begin(); it != j["train_config"].end(); ++it) {
      const std::string text = it->is_string() ? it->get<std::string>() : it->dump();
      reg.set(tc, it.key(), text, path);
    }
    info.source = path;
  } else {
    info.source = "toy task defaults (no rtpurbo_toy_task.json in '" + model_dir + "')";
  }
  tc.vocab_size = vocab_size;
  info.config = train::toy_task_config(tc);
  info.seq_len = tc.seq_len;
  return info;
}

// The picture rtpurbo-identify-heads wrote next to the profile: heads.svg for heads.h5 (or heads.h5.svg).
std::string find_heads_svg(const std::string& heads_source, const std::string& model_dir, std::string* where) {
  if (heads_source.empty()) return "";
  std::vector<fs::path> candidates;
  for (const fs::path& base : {fs::path(heads_source), fs::path(model_dir) / heads_source}) {
    fs::path p = base;
    candidates.push_back(p.replace_extension(".svg"));
    candidates.push_back(fs::path(base.string() + ".svg"));
  }
  for (const auto& c : candidates) {
    if (file_exists(c.string())) {
      std::string svg = read_text_file(c.string());
      if (svg.find("<svg") != std::string::npos && svg.rfind("</svg>") != std::string::npos) {
        *where = c.string();
        return svg;
      }
    }
  }
  return "";
}

// One pass's outcome: accuracy counts and, for the sparse passes, the attention statistics.
struct RunStats {
  data::ToyAccuracy acc;
  sparse::SparseStats stats;
};

RunStats run_sparse(model::Qwen3Model& model, const std::vector<data::ToySample>& samples,
                    const sparse::HeadMap& heads, const sparse::SparseSettings& settings,
                    const sparse::Indexer* indexer, bool measure_recall, int64_t batch_size) {
  sparse::SparseAttention attention(heads, settings, indexer);
  attention.set_measure_recall(measure_recall);
  model::ForwardOptions fo;
  fo.attention = &attention;
  RunStats r;
  r.acc = data::toy_accuracy(model, samples, fo, batch_size);
  r.stats = attention.stats();
  return r;
}

// The indexer's own quality, apart from block pooling: for every query position >= first_query of every
// retrieval head, the smallest token set whose index probability reaches top_p, and the true attention mass on
// it (sparse::indexer_kl's recall), averaged over (sequence, head, query). Dense forward; q/k from the observer.
double indexer_token_recall(model::Qwen3Model& model, const std::vector<data::ToySample>& samples,
                            const sparse::Indexer& indexer, const sparse::SparseSettings& settings, double top_p,
                            int64_t first_query) {
  const auto& heads = indexer.heads();
  const int64_t G = heads.group_size;
  double sum = 0;
  int64_t terms = 0;
  model::ForwardOptions fo;
  fo.return_hidden = true;  // the observer's q/k are what is measured; no logits
  fo.observer = [&](const model::LayerAttentionInputs& in) {
    const auto ret = heads.retrieval_heads(in.layer);
    if (ret.empty()) return;
    const int64_t T = in.q.size(2);
    if (T <= first_query) return;
    const auto& qi = settings.post_rope_indexer ? in.q : in.q_pre_rope;
    const auto& ki = settings.post_rope_indexer ? in.k : in.k_pre_rope;
    auto pos = torch::arange(first_query, T, torch::TensorOptions(torch::kInt64).device(in.q.device()));
    for (int64_t b = 0; b < in.q.size(0); ++b) {
      auto iq = indexer.index_queries(in.layer, qi.narrow(0, b, 1).index_select(2, pos))[0];  // [n, G, Nq, d]
      auto ik = indexer.index_keys(in.layer, ki.narrow(0, b, 1))[0];                          // [n, T, d]
      for (size_t r = 0; r < ret.size(); ++r) {
        sparse::KlInputs kl;
        kl.q = in.q[b].narrow(0, ret[r] * G, G).index_select(1, pos);
        kl.k = in.k[b][ret[r]];
        kl.index_q = iq[r];
        kl.index_k = ik[r];
        kl.positions = pos;
        kl.scale = in.scale;
        sum += sparse::indexer_kl(kl, top_p).recall;
        ++terms;
      }
    }
  };
  torch::NoGradGuard no_grad;
  for (const auto& smp : samples) model.forward(data::stack_ids({smp}), fo);
  return terms > 0 ? sum / static_cast<double>(terms) : 0;
}

json density_json(const sparse::SparseStats& s) {
  json rows = json::array();
  for (size_t l = 0; l < s.head_attended.size(); ++l) {
    json row = json::array();
    for (size_t g = 0; g < s.head_attended[l].size(); ++g)
      row.push_back(s.head_causal[l][g] > 0 ? s.head_attended[l][g] / s.head_causal[l][g] : 0.0);
    rows.push_back(row);
  }
  return rows;
}

// What eval.json is made of for one pass (RunStats), as counts and double sums: a JSON round trip keeps every bit
// (nlohmann writes doubles in their shortest exact form), so a resumed evaluation's eval.json is the uninterrupted one's.
json run_stats_to_json(const RunStats& r) {
  return {{"queries", r.acc.queries},
          {"correct", r.acc.correct},
          {"answer_tokens", r.acc.answer_tokens},
          {"correct_tokens", r.acc.correct_tokens},
          {"attended_pairs", r.stats.attended_pairs},
          {"causal_pairs", r.stats.causal_pairs},
          {"true_mass_kept", r.stats.true_mass_kept},
          {"true_mass_queries", r.stats.true_mass_queries},
          {"head_attended", r.stats.head_attended},
          {"head_causal", r.stats.head_causal}};
}

RunStats run_stats_from_json(const json& j, const std::string& path, const std::string& key) {
  try {
    RunStats r;
    r.acc.queries = j.at("queries").get<int64_t>();
    r.acc.correct = j.at("correct").get<int64_t>();
    r.acc.answer_tokens = j.at("answer_tokens").get<int64_t>();
    r.acc.correct_tokens = j.at("correct_tokens").get<int64_t>();
    r.stats.attended_pairs = j.at("attended_pairs").get<double>();
    r.stats.causal_pairs = j.at("causal_pairs").get<double>();
    r.stats.true_mass_kept = j.at("true_mass_kept").get<double>();
    r.stats.true_mass_queries = j.at("true_mass_queries").get<double>();
    r.stats.head_attended = j.at("head_attended").get<std::vector<std::vector<double>>>();
    r.stats.head_causal = j.at("head_causal").get<std::vector<std::vector<double>>>();
    return r;
  } catch (const json::exception& e) {
    RTP_THROW("'", path, "': pass '", key, "' is not a toy-eval pass record (", e.what(),
              "): remove the file and run without --resume");
  }
}

// What a resumed evaluation must share with the one it continues: everything the samples and the numbers depend on.
json toy_settings(const ToyEvalOptions& o, const RunContext& ctx) {
  return {{"model", absolute_setting_path(o.model_dir)},
          {"model_contents", contents_fingerprint(o.model_dir)},
          {"lengths", o.lengths},
          {"samples", o.samples},
          {"seed", ctx.seed},
          {"batch_size", o.batch_size},
          {"measure_recall", o.measure_recall},
          {"token_recall_top_p", o.token_recall_top_p},
          {"random_heads_indexer", absolute_setting_path(o.random_heads_indexer)},
          {"random_heads_indexer_contents", contents_fingerprint(o.random_heads_indexer)},
          {"device", ctx.device.is_cuda() ? "cuda" : "cpu"},
          {"dtype", dtype_name(ctx.dtype)}};
}

constexpr const char* kProgressFormat = "rtpurbo-toy-eval-progress";

// The passes an unfinished evaluation in out_dir holds (an empty object when starting afresh). Without resume an
// unfinished evaluation in the way is an error that says what to do; with it, the file must be one of these settings.
json load_toy_progress(const std::string& path, const json& settings, bool resume) {
  const bool exists = file_exists(path);
  if (!resume) {
    if (exists) {
      const json doc = read_json_file(path);
      RTP_THROW("'", path, "' holds a toy evaluation that did not finish (", doc.value("passes", json::object()).size(),
                " passes done): pass --resume to continue it, or choose another --out-dir (or remove '", path, "')");
    }
    return json::object();
  }
  RTP_CHECK(exists, "--resume: '", path, "' does not exist: there is no toy evaluation to continue in this --out-dir ",
            "(run without --resume to start one)");
  const json doc = read_json_file(path);
  RTP_CHECK(doc.is_object() && doc.value("format", std::string()) == kProgressFormat && doc.contains("settings") &&
                doc["settings"].is_object() && doc.contains("passes") && doc["passes"].is_object(),
            "--resume: '", path, "' is not a toy evaluation's progress file (expected {\"format\": \"", kProgressFormat,
            "\", \"settings\": {...}, \"passes\": {...}}): remove it, or choose another --out-dir");
  require_same_settings(path, doc["settings"], settings);
  return doc["passes"];
}

}  // namespace

sparse::HeadMap random_head_map(const sparse::HeadMap& like, uint64_t seed) {
  like.validate("head map");
  sparse::HeadMap m = sparse::HeadMap::all_streaming(like.num_layers, like.num_kv_heads, like.group_size);
  const int64_t n = like.num_layers * like.num_kv_heads, k = like.count_retrieval();
  std::vector<int64_t> slots(n);
  for (int64_t i = 0; i < n; ++i) slots[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < k; ++i) {  // partial Fisher-Yates
    const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
    const int64_t j = i + static_cast<int64_t>(u * static_cast<double>(n - i));
    std::swap(slots[i], slots[j]);
    m.retrieval[slots[i] / like.num_kv_heads][slots[i] % like.num_kv_heads] = 1;
  }
  return m;
}

KvBytes kv_cache_bytes(const sparse::HeadMap& heads, int64_t head_dim, int64_t indexer_dim, int64_t sink,
                       int64_t window, int64_t length, int64_t elem_bytes) {
  KvBytes b;
  const double per_token = 2.0 * head_dim * elem_bytes;  // K and V
  const double streaming_tokens = static_cast<double>(std::min(length, sink + window));
  for (int64_t l = 0; l < heads.num_layers; ++l)
    for (int64_t g = 0; g < heads.num_kv_heads; ++g) {
      b.dense += length * per_token;
      b.sparse += heads.is_retrieval(l, g)
                      ? length * per_token + static_cast<double>(length) * indexer_dim * elem_bytes
                      : streaming_tokens * per_token;
    }
  return b;
}

ToyEvalResult run_toy_eval(const ToyEvalOptions& o, const RunContext& ctx) {
  RTP_CHECK(o.samples >= 1, "--samples must be >= 1, found ", o.samples);
  RTP_CHECK(o.batch_size >= 1, "batch size must be >= 1, found ", o.batch_size);
  auto log = [&](const std::string& s) {
    if (!o.quiet) std::cerr << s << "\n";
  };
  // Whether there is an evaluation to continue (or one in the way), before the model loads.
  const std::string progress_path = o.out_dir + "/eval.progress.json";
  const json settings = toy_settings(o, ctx);
  json passes = load_toy_progress(progress_path, settings, o.resume);
  if (o.resume) log(str_cat("resuming '", progress_path, "': ", passes.size(), " passes done"));
  sparse::ConvertedModel cm = sparse::load_converted(o.model_dir, ctx.device, ctx.dtype);
  const auto& cfg = cm.model.config();
  const sparse::Indexer* indexer = cm.indexer.heads().num_layers > 0 ? &cm.indexer : nullptr;
  sparse::RtpurboManifest manifest;
  if (sparse::is_converted_model_dir(o.model_dir)) manifest = sparse::read_manifest(o.model_dir + "/rtpurbo.json");

  const ToyTaskInfo task_info = toy_task_for(o.model_dir, cfg.vocab_size);
  const data::ToyTask task(task_info.config);
  std::vector<int64_t> lengths = o.lengths;
  if (lengths.empty()) lengths.push_back(task_info.seq_len);
  for (auto T : lengths) {
    RTP_CHECK(T >= task_info.config.min_seq_len(), "length ", T, " is shorter than the toy task needs (",
              task_info.config.min_seq_len(), " tokens)");
    model::check_fits_positions(cfg, T, "length");  // else minutes of work past the positions the model knows
  }

  // Random-heads baseline: an indexer trained by the caller for a random map with the same number of heads.
  std::unique_ptr<sparse::IndexerCheckpoint> random_ck;
  std::string random_note;
  if (!o.random_heads_indexer.empty()) {
    random_ck = std::make_unique<sparse::IndexerCheckpoint>(
        sparse::load_indexer_checkpoint(o.random_heads_indexer, ctx.device, ctx.dtype));
    sparse::check_heads_fit_model(random_ck->heads, cfg, "'" + o.random_heads_indexer + "' head map");
    RTP_CHECK(random_ck->heads.count_retrieval() == cm.heads.count_retrieval(), "'", o.random_heads_indexer,
              "' has ", random_ck->heads.count_retrieval(), " retrieval KV heads, but the model under test has ",
              cm.heads.count_retrieval(), ": the random baseline must use the same number");
    if (random_ck->heads.retrieval == cm.heads.retrieval)
      random_note = "warning: the random-heads indexer's head map equals the identified one";
  } else {
    random_note =
        "random_heads omitted: no --random-heads-indexer given (train an indexer on random_head_map() heads with "
        "the same budget and pass its checkpoint)";
  }
  // The model's selection settings (the same budget), the baseline indexer's own shape and position.
  sparse::SparseSettings random_settings = cm.settings;
  if (random_ck) {
    random_settings.indexer_dim = random_ck->indexer.dim();
    random_settings.post_rope_indexer = random_ck->settings.post_rope_indexer;
  }

  const int64_t elem_bytes = static_cast<int64_t>(c10::elementSize(ctx.dtype));
  // Each pass is taken from the progress file when a resumed evaluation holds it, else run and recorded there.
  int64_t computed = 0;  // passes run by this invocation (stop_after_passes)
  bool stopped = false;
  bool replaced = false;
  auto write_progress = [&] {
    make_directories(o.out_dir);
    // An earlier evaluation's results beside this one's progress would pass for this one's.
    if (!replaced)
      for (const char* f : {"eval.json", "report.html"}) remove_tree(o.out_dir + "/" + f);
    replaced = true;
    write_json_atomic(progress_path, {{"format", kProgressFormat}, {"settings", settings}, {"passes", passes}});
  };
  // A pass's record as JSON; nullopt once stop_after_passes passes have run.
  auto pass_record = [&](const std::string& key, const std::string& what,
                         const std::function<json()>& run) -> std::optional<json> {
    if (passes.contains(key)) {
      log(str_cat("toy eval: ", what, ": from ", progress_path));
      return passes[key];
    }
    if (o.stop_after_passes > 0 && computed == o.stop_after_passes) {
      stopped = true;
      return std::nullopt;
    }
    log(str_cat("toy eval: ", what));
    passes[key] = run();
    ++computed;
    write_progress();
    return passes[key];
  };
  auto pass = [&](const std::string& key, const std::string& what,
                  const std::function<RunStats()>& run) -> std::optional<RunStats> {
    // A pass just run is read back from its record too: a resumed evaluation and an uninterrupted one take the
    // same numbers through the same path.
    const auto record = pass_record(key, what, [&] { return run_stats_to_json(run()); });
    if (!record) return std::nullopt;
    return run_stats_from_json(*record, progress_path, key);
  };
  ToyEvalResult res;
  json dense_by = json::array(), sparse_by = json::array(), random_by = json::array();
  data::ToyAccuracy dense_all, sparse_all, random_all;
  double att = 0, caus = 0, kept = 0, nq = 0, ratt = 0, rcaus = 0, rkept = 0, rnq = 0;
  sparse::SparseStats last_stats;
  for (int64_t T : lengths) {
    const auto samples = task.generate_many(T, ctx.seed, train::kEvalStream, 0, o.samples);
    const std::string at = str_cat("@", T);
    const auto dense_run = pass("dense" + at, str_cat("length ", T, ", ", o.samples, " samples: dense"), [&] {
      return RunStats{data::toy_accuracy(cm.model, samples, {}, o.batch_size), {}};
    });
    if (!dense_run) break;
    const data::ToyAccuracy& dense = dense_run->acc;
    const auto sparse_run = pass("sparse" + at, str_cat("length ", T, ": sparse"), [&] {
      return run_sparse(cm.model, samples, cm.heads, cm.settings, indexer, o.measure_recall, o.batch_size);
    });
    if (!sparse_run) break;
    const RunStats& sp = *sparse_run;
    std::optional<RunStats> random_run;
    if (random_ck) {
      random_run = pass("random" + at, str_cat("length ", T, ": random heads"), [&] {
        return run_sparse(cm.model, samples, random_ck->heads, random_settings, &random_ck->indexer, o.measure_recall,
                          o.batch_size);
      });
      if (!random_run) break;
    }
    ToyEvalLength L;
    L.length = T;
    L.dense_accuracy = dense.accuracy();
    L.sparse_accuracy = sp.acc.accuracy();
    L.attention_fraction = sp.stats.attention_fraction();
    L.indexer_recall = sp.stats.recall();
    const KvBytes kv = kv_cache_bytes(cm.heads, cfg.head_dim, indexer ? cm.settings.indexer_dim : 0, cm.settings.sink,
                                      cm.settings.window, T, elem_bytes);
    L.sparse_kv_bytes = kv.sparse;
    L.dense_kv_bytes = kv.dense;
    auto add = [](data::ToyAccuracy& a, const data::ToyAccuracy& b) {
      a.queries += b.queries;
      a.correct += b.correct;
      a.answer_tokens += b.answer_tokens;
      a.correct_tokens += b.correct_tokens;
    };
    add(dense_all, dense);
    add(sparse_all, sp.acc);
    att += sp.stats.attended_pairs;
    caus += sp.stats.causal_pairs;
    kept += sp.stats.true_mass_kept;
    nq += sp.stats.true_mass_queries;
    last_stats = sp.stats;
    dense_by.push_back({{"length", T}, {"accuracy", dense.accuracy()}, {"token_accuracy", dense.token_accuracy()},
                        {"queries", dense.queries}});
    sparse_by.push_back({{"length", T},
                         {"accuracy", sp.acc.accuracy()},
                         {"token_accuracy", sp.acc.token_accuracy()},
                         {"queries", sp.acc.queries},
                         {"attention_fraction", L.attention_fraction},
                         {"indexer_recall", o.measure_recall ? json(L.indexer_recall) : json(nullptr)},
                         {"kv_bytes", kv.sparse},
                         {"dense_kv_bytes", kv.dense}});
    if (random_run) {
      const RunStats& rs = *random_run;
      L.random_accuracy = rs.acc.accuracy();
      L.random_attention_fraction = rs.stats.attention_fraction();
      L.random_recall = rs.stats.recall();
      add(random_all, rs.acc);
      ratt += rs.stats.attended_pairs;
      rcaus += rs.stats.causal_pairs;
      rkept += rs.stats.true_mass_kept;
      rnq += rs.stats.true_mass_queries;
      random_by.push_back({{"length", T},
                           {"accuracy", rs.acc.accuracy()},
                           {"token_accuracy", rs.acc.token_accuracy()},
                           {"attention_fraction", L.random_attention_fraction},
                           {"indexer_recall", o.measure_recall ? json(L.random_recall) : json(nullptr)}});
    }
    res.by_length.push_back(L);
  }
  res.dense_accuracy = dense_all.accuracy();
  res.sparse_accuracy = sparse_all.accuracy();
  res.random_accuracy = random_ck ? random_all.accuracy() : -1;
  res.attention_fraction = caus > 0 ? att / caus : 0;
  res.indexer_recall = nq > 0 ? kept / nq : 0;
  if (!stopped && indexer && o.measure_recall && o.token_recall_top_p > 0) {
    const int64_t T = lengths.back();
    const std::string key = str_cat("token_recall@", T);
    const auto token = pass_record(
        key, str_cat("length ", T, ": token-level indexer recall at top-p ", o.token_recall_top_p), [&] {
          const auto samples = task.generate_many(T, ctx.seed, train::kEvalStream, 0, std::min<int64_t>(o.samples, 16));
          return json{{"token_recall", indexer_token_recall(cm.model, samples, *indexer, cm.settings,
                                                            o.token_recall_top_p, cm.settings.block_size)}};
        });
    if (token) {
      RTP_CHECK(token->contains("token_recall") && (*token)["token_recall"].is_number(), "'", progress_path,
                "': pass '", key, "' has no number 'token_recall': remove the file and run without --resume");
      res.token_recall = (*token)["token_recall"].get<double>();
    }
  }
  if (stopped) {
    res.finished = false;
    if (!o.quiet)
      std::cerr << "stopped after " << computed << " passes (--stop-after); '" << progress_path << "' holds "
                << passes.size() << " passes: continue with the same command and --resume\n";
    return res;
  }
  res.sparse_kv_bytes = res.by_length.back().sparse_kv_bytes;
  res.dense_kv_bytes = res.by_length.back().dense_kv_bytes;
  const int64_t longest = res.by_length.back().length;

  json j;
  j["task"] = "toy";
  j["model"] = o.model_dir;
  j["toy_task"] = task_info.source;
  j["toy_task_description"] = task.describe();
  j["dtype"] = dtype_name(ctx.dtype);
  j["device"] = ctx.device.str();
  j["samples"] = o.samples;
  j["seed"] = ctx.seed;
  j["lengths"] = lengths;
  j["head_map"] = sparse::head_map_to_json(cm.heads);
  j["settings"] = sparse::settings_to_json(cm.settings);
  j["has_indexer"] = indexer != nullptr;
  j["kv_note"] = str_cat("KV bytes for one sequence at length ", longest, ", ", elem_bytes,
                         " bytes per value: retrieval KV heads keep every token (K, V and indexer keys), streaming "
                         "KV heads sink + window tokens; dense keeps every token for every KV head");
  j["dense"] = {{"accuracy", res.dense_accuracy},
                {"token_accuracy", dense_all.token_accuracy()},
                {"kv_bytes", res.dense_kv_bytes},
                {"by_length", dense_by}};
  j["sparse"] = {{"accuracy", res.sparse_accuracy},
                 {"token_accuracy", sparse_all.token_accuracy()},
                 {"attention_fraction", res.attention_fraction},
                 {"indexer_recall", o.measure_recall ? json(res.indexer_recall) : json(nullptr)},
                 {"kv_bytes", res.sparse_kv_bytes},
                 {"dense_kv_bytes", res.dense_kv_bytes},
                 {"kv_ratio_dense_over_sparse", res.sparse_kv_bytes > 0 ? res.dense_kv_bytes / res.sparse_kv_bytes : 0},
                 {"density_length", longest},
                 {"density", density_json(last_stats)},
                 {"by_length", sparse_by}};
  if (!o.measure_recall) j["sparse"]["indexer_recall_note"] = "not measured (--no-recall)";
  if (res.token_recall >= 0) {
    j["sparse"]["indexer_token_recall"] = res.token_recall;
    j["sparse"]["indexer_token_recall_top_p"] = o.token_recall_top_p;
    j["sparse"]["indexer_token_recall_note"] = str_cat(
        "the indexer alone at the longest length: per retrieval head and query position >= block_size, the "
        "smallest token set with index mass >= ", o.token_recall_top_p, ", true attention mass on it (mean over "
        "up to 16 held-out sequences); indexer_recall is that of the block selection the sparse forward uses");
  }
  if (!indexer) j["sparse"]["indexer_note"] = "no indexer: retrieval heads attend densely";
  if (random_ck) {
    j["random_heads"] = {{"accuracy", res.random_accuracy},
                         {"token_accuracy", random_all.token_accuracy()},
                         {"attention_fraction", rcaus > 0 ? ratt / rcaus : 0},
                         {"indexer_recall", o.measure_recall ? json(rnq > 0 ? rkept / rnq : 0) : json(nullptr)},
                         {"indexer", o.random_heads_indexer},
                         {"head_map", sparse::head_map_to_json(random_ck->heads)},
                         {"by_length", random_by}};
    if (!random_note.empty()) j["random_heads_note"] = random_note;
  } else {
    j["random_heads"] = nullptr;
    j["random_heads_note"] = random_note;
  }

  make_directories(o.out_dir);
  res.eval_json_path = o.out_dir + "/eval.json";
  write_json_atomic(res.eval_json_path, j);
  std::error_code ec;
  fs::remove(progress_path, ec);  // finished: nothing left to resume
  if (ec) log(str_cat("warning: could not remove '", progress_path, "' (", ec.message(), "): remove it before the next run"));

  ReportData rd;
  rd.title = "RTPurbo toy evaluation";
  rd.model_dir = o.model_dir;
  rd.heads = cm.heads;
  rd.heads_svg = find_heads_svg(manifest.heads_source, o.model_dir, &rd.heads_svg_source);
  for (const auto& row : j["sparse"]["density"]) rd.density.push_back(row.get<std::vector<double>>());
  rd.density_length = longest;
  rd.lengths = lengths;
  AccuracySeries ds{"dense", {}}, ss{"sparse", {}}, rs{"random heads", {}};
  for (const auto& L : res.by_length) {
    ds.accuracy.push_back(L.dense_accuracy);
    ss.accuracy.push_back(L.sparse_accuracy);
    rs.accuracy.push_back(L.random_accuracy);
  }
  rd.series = {ds, ss};
  if (random_ck) rd.series.push_back(rs);
  rd.summary = {
      {"dense accuracy", fmt("%.4f", res.dense_accuracy)},
      {"sparse accuracy", fmt("%.4f", res.sparse_accuracy)},
      {"random-heads accuracy", random_ck ? fmt("%.4f", res.random_accuracy) : std::string("not evaluated")},
      {"attention fraction (sparse / dense causal pairs)", fmt("%.4f", res.attention_fraction)},
      {"indexer recall (true mass kept, retrieval heads)",
       o.measure_recall ? fmt("%.4f", res.indexer_recall) : std::string("not measured")},
      {str_cat("indexer token-level recall at top-p ", o.token_recall_top_p, " (no block pooling)"),
       res.token_recall >= 0 ? fmt("%.4f", res.token_recall) : std::string("not measured")},
      {str_cat("KV cache at ", longest, " tokens: dense"), human_bytes(res.dense_kv_bytes)},
      {str_cat("KV cache at ", longest, " tokens: sparse"), human_bytes(res.sparse_kv_bytes)},
      {"retrieval KV heads", str_cat(cm.heads.count_retrieval(), " of ", cm.heads.num_layers * cm.heads.num_kv_heads)},
      {"settings", str_cat("sink ", cm.settings.sink, ", window ", cm.settings.window, ", top-p ", cm.settings.top_p,
                           ", block ", cm.settings.block_size, ", indexer dim ", cm.settings.indexer_dim,
                           ", dense below ", cm.settings.dense_below, ", query sub-blocks ",
                           cm.settings.query_sub_blocks, " (", cm.settings.sub_block_aggregate, ")")},
      {"samples per length", str_cat(o.samples, " (seed ", ctx.seed, ")")}};
  rd.notes.push_back(j["kv_note"].get<std::string>());
  if (!random_note.empty()) rd.notes.push_back(random_note);
  res.report_path = o.out_dir + "/report.html";
  write_report_html(rd, res.report_path);

  if (!o.quiet) {
    std::printf("%-8s %10s %10s %10s %10s %10s %12s %12s\n", "length", "dense", "sparse", "random", "attn_frac",
                "recall", "kv_dense", "kv_sparse");
    for (const auto& L : res.by_length)
      std::printf("%-8lld %10.4f %10.4f %10s %10.4f %10s %12s %12s\n", static_cast<long long>(L.length),
                  L.dense_accuracy, L.sparse_accuracy,
                  L.random_accuracy >= 0 ? fmt("%.4f", L.random_accuracy).c_str() : "-", L.attention_fraction,
                  o.measure_recall ? fmt("%.4f", L.indexer_recall).c_str() : "-", human_bytes(L.dense_kv_bytes).c_str(),
                  human_bytes(L.sparse_kv_bytes).c_str());
    std::printf("%-8s %10.4f %10.4f %10s %10.4f %10s\n", "all", res.dense_accuracy, res.sparse_accuracy,
                random_ck ? fmt("%.4f", res.random_accuracy).c_str() : "-", res.attention_fraction,
                o.measure_recall ? fmt("%.4f", res.indexer_recall).c_str() : "-");
    if (res.token_recall >= 0)
      std::printf("indexer alone (token level, top-p %.2f, length %lld): recall of true attention mass %.4f\n",
                  o.token_recall_top_p, static_cast<long long>(longest), res.token_recall);
    std::printf("eval.json: %s\nreport: %s\n", res.eval_json_path.c_str(), res.report_path.c_str());
  }
  return res;
}

}  // namespace rtp::eval
