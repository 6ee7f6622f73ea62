#include "rtp/eval/ruler_report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/eval/html.h"

namespace rtp::eval {

using html::fmt;
using nlohmann::json;

namespace {

// One row of ruler.json, checked. ruler_eval sums the times over the samples and keeps the last sample's KV bytes.
struct Row {
  double dense_accuracy = 0, dense_time_s = 0, dense_kv_bytes = 0;
  double dense_prefill_s = -1, dense_decode_s = -1;  // -1: not in the file (older files time dense as a whole)
  double sparse_accuracy = 0, sparse_prefill_s = 0, sparse_decode_s = 0, sparse_kv_bytes = 0;
  // Optional, per layer (last sample): the prompt prefill's attended / causal pairs and the cache's bytes.
  std::vector<double> sparse_layer_fraction, sparse_layer_kv_bytes;
};

struct RulerResults {
  std::string model;
  std::string seed;  // as written: RunContext's seed is a uint64_t
  int64_t samples = 0;
  bool dense = false, sparse = false;
  bool dense_split = false;  // every row has the dense prefill and decode times apart
  std::vector<std::string> tasks;  // in the order of their first row
  std::vector<int64_t> lengths;    // ascending
  std::map<std::pair<std::string, int64_t>, Row> rows;

  const Row& at(const std::string& task, int64_t length) const { return rows.at({task, length}); }
};

const json& field(const json& obj, const char* key, const std::string& where, const char* expected) {
  auto it = obj.find(key);
  RTP_CHECK(it != obj.end(), where, " has no '", key, "': expected ", expected);
  return *it;
}

double number(const json& obj, const char* key, const std::string& where, const char* expected, double lo,
              double hi) {
  const json& v = field(obj, key, where, expected);
  RTP_CHECK(v.is_number(), where, ": '", key, "' is a ", v.type_name(), " (", v.dump(), "): expected ", expected);
  const double d = v.get<double>();
  RTP_CHECK(std::isfinite(d) && d >= lo && d <= hi, where, ": '", key, "' is ", v.dump(), ": expected ", expected);
  return d;
}

int64_t integer(const json& obj, const char* key, const std::string& where, const char* expected, int64_t lo) {
  const json& v = field(obj, key, where, expected);
  RTP_CHECK(v.is_number_integer() && v.get<int64_t>() >= lo, where, ": '", key, "' is ", v.dump(), ": expected ",
            expected);
  return v.get<int64_t>();
}

std::string text(const json& obj, const char* key, const std::string& where, const char* expected) {
  const json& v = field(obj, key, where, expected);
  RTP_CHECK(v.is_string(), where, ": '", key, "' is ", v.dump(), ": expected ", expected);
  return v.get<std::string>();
}

const char* const kDenseScore = "the dense score, a number in [0, 1] (rows have 'dense_accuracy' when the dense "
                                "model was evaluated, and some do)";
const char* const kSparseScore = "the sparse score, a number in [0, 1] (rows have 'sparse_accuracy' when the sparse "
                                 "model was evaluated, and some do)";

RulerResults parse(const json& j, const std::string& source) {
  RTP_CHECK(j.is_object(), source, " is not a JSON object: expected ruler_eval's {model, seed, samples, results}");
  RulerResults r;
  r.model = text(j, "model", source, "the model directory (a string)");
  const json& seed = field(j, "seed", source, "the prompt seed (an integer)");
  RTP_CHECK(seed.is_number_integer(), source, ": 'seed' is ", seed.dump(), ": expected the prompt seed (an integer)");
  r.seed = seed.dump();
  r.samples = integer(j, "samples", source, "the samples per task and length (a positive integer)", 1);
  const json& results = field(j, "results", source, "an array with one row per task and length");
  RTP_CHECK(results.is_array() && !results.empty(), source, ": 'results' is ",
            results.is_array() ? "empty" : "not an array", ": expected one row per task and length");
  // A mode ran when any row has its score; ruler_eval then writes all of its fields into every row.
  for (const auto& row : results) {
    r.dense = r.dense || (row.is_object() && row.contains("dense_accuracy"));
    r.sparse = r.sparse || (row.is_object() && row.contains("sparse_accuracy"));
  }
  RTP_CHECK(r.dense || r.sparse, source, ": no row has 'dense_accuracy' or 'sparse_accuracy': expected the scores of ",
            "the dense and/or the sparse model");
  const double inf = HUGE_VAL;
  for (size_t i = 0; i < results.size(); ++i) {
    const json& row = results[i];
    const std::string at = str_cat(source, ": results[", i, "]");
    RTP_CHECK(row.is_object(), at, " is ", row.dump(), ": expected an object");
    const std::string task = text(row, "task", at, "the task name (a string)");
    const int64_t length = integer(row, "length", at, "the prompt length in tokens (a positive integer)", 1);
    const std::string where = str_cat(at, " (task '", task, "', length ", length, ")");
    Row x;
    if (r.dense) {
      x.dense_accuracy = number(row, "dense_accuracy", where, kDenseScore, 0, 1);
      x.dense_time_s = number(row, "dense_time_s", where, "seconds of dense generation (>= 0)", 0, inf);
      x.dense_kv_bytes = number(row, "dense_kv_bytes", where, "the dense KV cache in bytes (>= 0)", 0, inf);
      if (row.contains("dense_prefill_s") || row.contains("dense_decode_s")) {
        x.dense_prefill_s = number(row, "dense_prefill_s", where, "seconds of dense prefill (>= 0)", 0, inf);
        x.dense_decode_s = number(row, "dense_decode_s", where, "seconds of dense decode (>= 0)", 0, inf);
      }
    }
    if (r.sparse) {
      x.sparse_accuracy = number(row, "sparse_accuracy", where, kSparseScore, 0, 1);
      x.sparse_prefill_s = number(row, "sparse_prefill_s", where, "seconds of sparse prefill (>= 0)", 0, inf);
      x.sparse_decode_s = number(row, "sparse_decode_s", where, "seconds of sparse decode (>= 0)", 0, inf);
      x.sparse_kv_bytes = number(row, "sparse_kv_bytes", where, "the sparse KV cache in bytes (>= 0)", 0, inf);
      auto per_layer = [&](const char* key, double hi, std::vector<double>& out) {
        if (!row.contains(key)) return;
        const json& a = row[key];
        RTP_CHECK(a.is_array() && !a.empty(), where, ": '", key, "' is ", a.dump().substr(0, 80),
                  ": expected a non-empty array with one number per layer");
        for (size_t i = 0; i < a.size(); ++i) {
          RTP_CHECK(a[i].is_number() && a[i].get<double>() >= 0 && a[i].get<double>() <= hi, where, ": '", key, "'[",
                    i, "] is ", a[i].dump(), ": expected a number in [0, ", hi, "]");
          out.push_back(a[i].get<double>());
        }
      };
      per_layer("sparse_attended_fraction_per_layer", 1.0, x.sparse_layer_fraction);
      per_layer("sparse_kv_bytes_per_layer", inf, x.sparse_layer_kv_bytes);
    }
    RTP_CHECK(r.rows.emplace(std::make_pair(task, length), x).second, where,
              " repeats an earlier row: expected one row per task and length");
    if (std::find(r.tasks.begin(), r.tasks.end(), task) == r.tasks.end()) r.tasks.push_back(task);
    if (std::find(r.lengths.begin(), r.lengths.end(), length) == r.lengths.end()) r.lengths.push_back(length);
  }
  std::sort(r.lengths.begin(), r.lengths.end());
  r.dense_split = r.dense && std::all_of(r.rows.begin(), r.rows.end(), [](const auto& kv) {
    return kv.second.dense_prefill_s >= 0;
  });
  // The plots draw every task over the same lengths; ruler_eval evaluates every task at every length.
  for (const auto& t : r.tasks)
    for (int64_t l : r.lengths)
      RTP_CHECK(r.rows.count({t, l}), source, ": 'results' has no row for task '", t, "' at length ", l,
                ": expected every task at every length");
  return r;
}

// One unit for every KV figure of the report, so that rows and plots compare at a glance.
std::pair<double, const char*> kv_unit(const RulerResults& r) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double largest = 0;
  for (const auto& [key, x] : r.rows) largest = std::max({largest, x.dense_kv_bytes, x.sparse_kv_bytes});
  int u = 0;
  double scale = 1;
  while (u < 4 && largest >= scale * 1024) scale *= 1024, ++u;
  return {scale, units[u]};
}

std::string td(const std::string& s) { return "<td>" + s + "</td>"; }

std::string summary_section(const RulerResults& r) {
  std::string h = "<section id=\"summary\"><h2>Summary</h2>\n<p>String-match score per task and length (";
  h += str_cat(r.samples, r.samples == 1 ? " sample" : " samples", " each, seed ", r.seed, ").</p>\n");
  h += "<table><tr><th>task</th><th>length</th>";
  if (r.dense) h += "<th>dense</th>";
  if (r.sparse) h += "<th>sparse</th>";
  if (r.dense && r.sparse) h += "<th>sparse &#8722; dense</th>";
  h += "</tr>";
  double dense_sum = 0, sparse_sum = 0;
  for (const auto& t : r.tasks)
    for (int64_t l : r.lengths) {
      const Row& x = r.at(t, l);
      h += "<tr>" + td(html_escape(t)) + td(std::to_string(l));
      if (r.dense) h += td(fmt("%.4f", x.dense_accuracy));
      if (r.sparse) h += td(fmt("%.4f", x.sparse_accuracy));
      if (r.dense && r.sparse) h += td(fmt("%+.4f", x.sparse_accuracy - x.dense_accuracy));
      h += "</tr>";
      dense_sum += x.dense_accuracy, sparse_sum += x.sparse_accuracy;
    }
  const double n = static_cast<double>(r.rows.size());
  h += "<tr><th>mean</th><th>all</th>";
  if (r.dense) h += "<th>" + fmt("%.4f", dense_sum / n) + "</th>";
  if (r.sparse) h += "<th>" + fmt("%.4f", sparse_sum / n) + "</th>";
  if (r.dense && r.sparse) h += "<th>" + fmt("%+.4f", (sparse_sum - dense_sum) / n) + "</th>";
  h += "</tr></table>\n</section>\n";
  return h;
}

std::string accuracy_section(const RulerResults& r) {
  std::string h = "<section id=\"accuracy\"><h2>Score against length</h2>\n";
  for (const auto& t : r.tasks) {
    html::LinePlot p;
    p.css_class = "accuracy";
    p.lengths = r.lengths;
    p.y_label = "string-match score";
    // Fixed colours, so that dense and sparse look the same in every plot and in --dense / --sparse runs.
    html::LineSeries dense{"dense", {}, html::series_colour(0)}, sparse{"sparse", {}, html::series_colour(1)};
    for (int64_t l : r.lengths) {
      dense.values.push_back(r.at(t, l).dense_accuracy);
      sparse.values.push_back(r.at(t, l).sparse_accuracy);
    }
    if (r.dense) p.series.push_back(dense);
    if (r.sparse) p.series.push_back(sparse);
    h += "<figure class=\"task\"><figcaption>" + html_escape(t) + "</figcaption>" + html::render_line_plot_svg(p) +
         "</figure>\n";
  }
  h += "</section>\n";
  return h;
}

// Mean over tasks at each length of one Row field.
std::vector<double> mean_per_length(const RulerResults& r, double Row::*f, double scale = 1) {
  std::vector<double> out;
  for (int64_t l : r.lengths) {
    double s = 0;
    for (const auto& t : r.tasks) s += r.at(t, l).*f;
    out.push_back(s / static_cast<double>(r.tasks.size()) / scale);
  }
  return out;
}

std::string memory_section(const RulerResults& r) {
  const auto [scale, unit] = kv_unit(r);
  html::LinePlot p;
  p.css_class = "kv";
  p.lengths = r.lengths;
  p.y_label = str_cat("KV cache (", unit, ")");
  p.y_max = 0;
  p.tick_format = "%.3g";
  p.value_format = "%.2f";
  const auto dense = mean_per_length(r, &Row::dense_kv_bytes, scale);
  const auto sparse = mean_per_length(r, &Row::sparse_kv_bytes, scale);
  if (r.dense) p.series.push_back({"dense", dense, html::series_colour(0)});
  if (r.sparse) p.series.push_back({"sparse", sparse, html::series_colour(1)});
  std::string h = "<section id=\"memory\"><h2>KV cache</h2>\n<p>Bytes the cache holds at the end of generation "
                  "(prompt and generated tokens; mean over tasks of the last sample).</p>\n";
  h += html::render_line_plot_svg(p) + "\n<table><tr><th>length</th>";
  if (r.dense) h += str_cat("<th>dense (", unit, ")</th>");
  if (r.sparse) h += str_cat("<th>sparse (", unit, ")</th>");
  if (r.dense && r.sparse) h += "<th>sparse / dense</th>";
  h += "</tr>";
  for (size_t i = 0; i < r.lengths.size(); ++i) {
    h += "<tr>" + td(std::to_string(r.lengths[i]));
    if (r.dense) h += td(fmt("%.2f", dense[i]));
    if (r.sparse) h += td(fmt("%.2f", sparse[i]));
    if (r.dense && r.sparse) h += td(dense[i] > 0 ? fmt("%.3f", sparse[i] / dense[i]) : std::string("-"));
    h += "</tr>";
  }
  h += "</table>\n</section>\n";
  return h;
}

std::string time_section(const RulerResults& r) {
  const double n = static_cast<double>(r.samples);  // ruler.json's times are sums over the samples
  html::LinePlot p;
  p.css_class = "time";
  p.lengths = r.lengths;
  p.y_label = "seconds per sample";
  p.y_max = 0;
  p.tick_format = "%.3g";
  p.value_format = "%.4f s";
  if (r.dense_split) {
    p.series.push_back({"dense prefill", mean_per_length(r, &Row::dense_prefill_s, n), html::series_colour(0)});
    p.series.push_back({"dense decode", mean_per_length(r, &Row::dense_decode_s, n), html::series_colour(0), true});
  } else if (r.dense) {
    p.series.push_back({"dense (prefill + decode)", mean_per_length(r, &Row::dense_time_s, n), html::series_colour(0)});
  }
  if (r.sparse) {
    p.series.push_back({"sparse prefill", mean_per_length(r, &Row::sparse_prefill_s, n), html::series_colour(1)});
    p.series.push_back({"sparse decode", mean_per_length(r, &Row::sparse_decode_s, n), html::series_colour(1), true});
  }
  std::string h = str_cat("<section id=\"time\"><h2>Time and memory per task</h2>\n<p>Wall-clock seconds per sample, "
                          "mean over tasks; decode: every generated token after the first (which the prefill gives).",
                          r.dense && !r.dense_split ? " Dense generation is timed as a whole (prefill and decode "
                                                      "together) in this file." : "", "</p>\n");
  h += html::render_line_plot_svg(p) + "\n";
  const auto [scale, unit] = kv_unit(r);
  h += "<table><tr><th>task</th><th>length</th>";
  if (r.dense_split)
    h += str_cat("<th>dense prefill s/sample</th><th>dense decode s/sample</th><th>dense KV (", unit, ")</th>");
  else if (r.dense)
    h += str_cat("<th>dense s/sample</th><th>dense KV (", unit, ")</th>");
  if (r.sparse)
    h += str_cat("<th>sparse prefill s/sample</th><th>sparse decode s/sample</th><th>sparse KV (", unit, ")</th>");
  h += "</tr>";
  for (const auto& t : r.tasks)
    for (int64_t l : r.lengths) {
      const Row& x = r.at(t, l);
      h += "<tr>" + td(html_escape(t)) + td(std::to_string(l));
      if (r.dense_split)
        h += td(fmt("%.4f", x.dense_prefill_s / n)) + td(fmt("%.4f", x.dense_decode_s / n)) +
             td(fmt("%.2f", x.dense_kv_bytes / scale));
      else if (r.dense)
        h += td(fmt("%.4f", x.dense_time_s / n)) + td(fmt("%.2f", x.dense_kv_bytes / scale));
      if (r.sparse)
        h += td(fmt("%.4f", x.sparse_prefill_s / n)) + td(fmt("%.4f", x.sparse_decode_s / n)) +
             td(fmt("%.2f", x.sparse_kv_bytes / scale));
      h += "</tr>";
    }
  h += "</table>\n</section>\n";
  return h;
}

// Per layer at the longest length, mean over tasks: how much of the causal attention the prefill touched and what
// the cache holds. Absent when ruler.json has no per-layer figures (older files, dense-only runs).
std::string layers_section(const RulerResults& r) {
  if (!r.sparse || r.lengths.empty()) return "";
  const int64_t L = r.lengths.back();
  size_t layers = 0;
  for (const auto& t : r.tasks) layers = std::max(layers, r.at(t, L).sparse_layer_fraction.size());
  if (layers == 0) return "";
  std::vector<double> frac(layers, 0.0), bytes(layers, 0.0);
  std::vector<int> n(layers, 0);
  for (const auto& t : r.tasks) {
    const Row& x = r.at(t, L);
    for (size_t l = 0; l < x.sparse_layer_fraction.size() && l < layers; ++l) {
      frac[l] += x.sparse_layer_fraction[l];
      bytes[l] += l < x.sparse_layer_kv_bytes.size() ? x.sparse_layer_kv_bytes[l] : 0.0;
      ++n[l];
    }
  }
  const auto [scale, unit] = kv_unit(r);
  std::string h = str_cat("<section id=\"layers\"><h2>Per layer at ", L, " tokens</h2>\n<p>Attended fraction: (query, "
                          "key) pairs the sparse prefill of the prompt attended over those of dense causal attention; "
                          "KV: bytes the sparse cache holds. Mean over tasks of the last sample.</p>\n");
  h += str_cat("<table><tr><th>layer</th><th>attended fraction</th><th></th><th>sparse KV (", unit, ")</th></tr>");
  for (size_t l = 0; l < layers; ++l) {
    const double f = n[l] ? frac[l] / n[l] : 0.0;
    const double b = n[l] ? bytes[l] / n[l] / scale : 0.0;
    h += "<tr>" + td(std::to_string(l)) + td(fmt("%.3f", f)) +
         td(str_cat("<svg width=\"120\" height=\"10\"><rect class=\"bar\" width=\"", fmt("%.1f", 120 * f),
                    "\" height=\"10\" fill=\"", html::series_colour(1), "\"/></svg>")) +
         td(fmt("%.2f", b)) + "</tr>";
  }
  h += "</table>\n</section>\n";
  return h;
}

}  // namespace

std::string render_ruler_report_html(const json& j, const std::string& source) {
  const RulerResults r = parse(j, source);
  std::string h = html::page_begin("RTPurbo RULER evaluation");
  h += "<p>Model: <code>" + html_escape(r.model) + "</code>; results: <code>" + html_escape(source) + "</code></p>\n";
  h += summary_section(r) + accuracy_section(r) + memory_section(r) + layers_section(r) + time_section(r);
  h += html::page_end();
  return h;
}

}  // namespace rtp::eval
