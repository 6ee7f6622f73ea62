// The RULER report rendered from a hand-made ruler.json: table rows, escaping, one line per (task, mode) whose
// points follow the scores, the memory and time sections, single-mode runs, and errors naming missing fields.
#include "rtp/eval/ruler_report.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "rtp/core/error.h"
#include "test_util.h"

namespace {

using nlohmann::json;
using rtp::testing::error_of;

json row(const std::string& task, int64_t length, double dense, double sparse) {
  // Times are sums over the samples (2 below); KV bytes grow with the length.
  return {{"task", task},
          {"length", length},
          {"dense_accuracy", dense},
          {"dense_time_s", 2.0 * length / 1024},
          {"dense_kv_bytes", 1048576 * length / 1024},
          {"sparse_accuracy", sparse},
          {"sparse_prefill_s", 0.5},
          {"sparse_decode_s", 1.0},
          {"sparse_kv_bytes", 262144 * length / 1024}};
}

// The structure ruler_eval writes; lengths out of order within a task, as a merged file might have them.
json sample() {
  return {{"model", "runs/<conv>"},
          {"seed", 7},
          {"samples", 2},
          {"results",
           {row("niah_single_1", 4096, 0.5, 0.25), row("niah_single_1", 1024, 1.0, 0.75),
            row("a<&>b", 1024, 0.0, 0.5), row("a<&>b", 4096, 0.25, 1.0)}}};
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

std::string section(const std::string& h, const std::string& id) {
  const size_t b = h.find("<section id=\"" + id + "\"");
  if (b == std::string::npos) return "";
  return h.substr(b, h.find("</section>", b) - b);
}

// The per-task figure of the accuracy section, found by its caption (escaped as the report writes it).
std::string figure(const std::string& h, const std::string& caption) {
  const size_t c = h.find("<figcaption>" + caption + "</figcaption>");
  if (c == std::string::npos) return "";
  const size_t b = h.rfind("<figure", c);
  return h.substr(b, h.find("</figure>", c) - b);
}

// The points of the polyline titled `name` in `svg`: (x, y) pairs.
std::vector<std::pair<double, double>> line(const std::string& svg, const std::string& name) {
  std::vector<std::pair<double, double>> out;
  const size_t t = svg.find("\"><title>" + name + "</title></polyline>");
  if (t == std::string::npos) return out;
  const size_t p = svg.rfind("points=\"", t) + 8;
  const std::string pts = svg.substr(p, t - p);
  for (const char* c = pts.c_str(); *c;) {
    char* end;
    const double x = std::strtod(c, &end);
    const double y = std::strtod(end + 1, &end);  // skip the comma
    out.emplace_back(x, y);
    c = end;
    while (*c == ' ') ++c;
  }
  return out;
}

TEST(RulerReport, SummaryHasEveryTaskAndLengthRow) {
  const std::string h = rtp::eval::render_ruler_report_html(sample(), "runs/x/ruler.json");
  for (const char* id : {"summary", "accuracy", "memory", "time"}) EXPECT_NE(section(h, id), "") << id;
  const std::string s = section(h, "summary");
  EXPECT_NE(s.find("<th>dense</th><th>sparse</th><th>sparse &#8722; dense</th>"), std::string::npos) << s;
  for (const char* r : {"<tr><td>niah_single_1</td><td>1024</td><td>1.0000</td><td>0.7500</td><td>-0.2500</td></tr>",
                        "<tr><td>niah_single_1</td><td>4096</td><td>0.5000</td><td>0.2500</td><td>-0.2500</td></tr>",
                        "<tr><td>a&lt;&amp;&gt;b</td><td>1024</td><td>0.0000</td><td>0.5000</td><td>+0.5000</td></tr>",
                        "<tr><td>a&lt;&amp;&gt;b</td><td>4096</td><td>0.2500</td><td>1.0000</td><td>+0.7500</td></tr>"})
    EXPECT_EQ(count(s, r), 1u) << r;
  // Lengths ascending within a task, whatever the order of the rows.
  EXPECT_LT(s.find("<td>niah_single_1</td><td>1024</td>"), s.find("<td>niah_single_1</td><td>4096</td>"));
  EXPECT_NE(s.find("<tr><th>mean</th><th>all</th><th>0.4375</th><th>0.6250</th><th>+0.1875</th></tr>"),
            std::string::npos);
  EXPECT_NE(s.find("2 samples each, seed 7"), std::string::npos);
}

TEST(RulerReport, EscapesTaskNamesAndModelAndIsSelfContained) {
  const std::string h = rtp::eval::render_ruler_report_html(sample(), "runs/x/ruler.json");
  EXPECT_EQ(h.find("a<&>b"), std::string::npos);
  EXPECT_EQ(h.find("<conv>"), std::string::npos);
  EXPECT_NE(h.find("runs/&lt;conv&gt;"), std::string::npos);
  EXPECT_NE(h.find("<figcaption>a&lt;&amp;&gt;b</figcaption>"), std::string::npos);
  EXPECT_EQ(h.find("<script"), std::string::npos);
  EXPECT_EQ(h.find("http://"), h.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
}

TEST(RulerReport, OneLinePerTaskAndModeFollowingTheScores) {
  const std::string h = rtp::eval::render_ruler_report_html(sample());
  EXPECT_EQ(count(section(h, "accuracy"), "<polyline"), 4u);  // 2 tasks x (dense, sparse)
  const std::string niah = figure(h, "niah_single_1"), odd = figure(h, "a&lt;&amp;&gt;b");
  ASSERT_NE(niah, "");
  ASSERT_NE(odd, "");
  EXPECT_EQ(count(niah, "<polyline"), 2u);
  EXPECT_EQ(count(odd, "<polyline"), 2u);
  const auto nd = line(niah, "dense"), ns = line(niah, "sparse"), od = line(odd, "dense"), os = line(odd, "sparse");
  for (const auto* l : {&nd, &ns, &od, &os}) {
    ASSERT_EQ(l->size(), 2u);               // one point per length
    EXPECT_LT((*l)[0].first, (*l)[1].first);  // 1024 left of 4096
  }
  // Same x per length in every line; higher score -> smaller y, linear in the score.
  EXPECT_DOUBLE_EQ(nd[0].first, os[0].first);
  EXPECT_DOUBLE_EQ(nd[1].first, os[1].first);
  const double top = nd[0].second, bottom = od[0].second;  // scores 1 and 0
  EXPECT_LT(top, bottom);
  EXPECT_DOUBLE_EQ(os[1].second, top);      // sparse 1.0 at 4096
  EXPECT_LT(nd[0].second, ns[0].second);    // 1.0 above 0.75
  EXPECT_LT(nd[1].second, ns[1].second);    // 0.5 above 0.25
  EXPECT_GT(od[1].second, os[0].second);    // 0.25 below 0.5
  auto y_of = [&](double score) { return bottom + (top - bottom) * score; };
  for (const auto& [y, score] : std::vector<std::pair<double, double>>{
           {nd[1].second, 0.5}, {ns[0].second, 0.75}, {ns[1].second, 0.25}, {od[1].second, 0.25}, {os[0].second, 0.5}})
    EXPECT_NEAR(y, y_of(score), 0.11) << score;  // points are written with one decimal
  EXPECT_NE(niah.find("<title>sparse at 4096: 0.2500</title>"), std::string::npos);
}

TEST(RulerReport, MemoryAndTimePerSample) {
  const std::string h = rtp::eval::render_ruler_report_html(sample());
  const std::string m = section(h, "memory"), t = section(h, "time");
  EXPECT_EQ(count(m, "<polyline"), 2u);  // dense, sparse
  EXPECT_NE(m.find("KV cache (MiB)"), std::string::npos);
  EXPECT_NE(m.find("<tr><td>4096</td><td>4.00</td><td>1.00</td><td>0.250</td></tr>"), std::string::npos) << m;
  const auto dense = line(m, "dense"), sparse = line(m, "sparse");
  ASSERT_EQ(dense.size(), 2u);
  ASSERT_EQ(sparse.size(), 2u);
  EXPECT_LT(dense[1].second, dense[0].second);  // more bytes at 4096: higher up
  EXPECT_LT(dense[1].second, sparse[1].second);
  EXPECT_EQ(count(t, "<polyline"), 3u);  // dense, sparse prefill, sparse decode
  // Times are sums over 2 samples: per sample 4.0 / 2 dense at 4096, 0.5 / 2 prefill, 1.0 / 2 decode.
  EXPECT_NE(t.find("<tr><td>niah_single_1</td><td>4096</td><td>4.0000</td><td>4.00</td><td>0.2500</td>"
                   "<td>0.5000</td><td>1.00</td></tr>"),
            std::string::npos)
      << t;
}

// Files written since the dense prefill and decode were timed apart: the dense time splits like the sparse one.
TEST(RulerReport, DensePrefillAndDecodeApartWhenEveryRowHasThem) {
  json j = sample();
  for (auto& r : j["results"]) {
    r["dense_prefill_s"] = 0.25 * r["dense_time_s"].get<double>();
    r["dense_decode_s"] = 0.75 * r["dense_time_s"].get<double>();
  }
  const std::string t = section(rtp::eval::render_ruler_report_html(j), "time");
  EXPECT_EQ(count(t, "<polyline"), 4u);  // dense prefill, dense decode, sparse prefill, sparse decode
  EXPECT_EQ(line(t, "dense prefill").size(), 2u);
  EXPECT_EQ(t.find("timed as a whole"), std::string::npos) << t;
  // 4096: prefill 2.0 / 2, decode 6.0 / 2 per sample.
  EXPECT_NE(t.find("<tr><td>niah_single_1</td><td>4096</td><td>1.0000</td><td>3.0000</td><td>4.00</td>"
                   "<td>0.2500</td><td>0.5000</td><td>1.00</td></tr>"),
            std::string::npos)
      << t;
  // One row without them: the file is read as an older one (one dense time), and says so.
  j["results"][1].erase("dense_prefill_s");
  j["results"][1].erase("dense_decode_s");
  const std::string old = section(rtp::eval::render_ruler_report_html(j), "time");
  EXPECT_EQ(count(old, "<polyline"), 3u);
  EXPECT_NE(old.find("timed as a whole"), std::string::npos) << old;
  // Half of the pair is an error naming the missing one.
  j["results"][2].erase("dense_decode_s");
  const std::string e = error_of([&] { rtp::eval::render_ruler_report_html(j); });
  EXPECT_NE(e.find("'dense_decode_s'"), std::string::npos) << e;
}

TEST(RulerReport, SingleModeRunsShowOnlyThatMode) {
  json j = sample();
  for (auto& r : j["results"])
    for (const char* k : {"dense_accuracy", "dense_time_s", "dense_kv_bytes"}) r.erase(k);
  const std::string h = rtp::eval::render_ruler_report_html(j);
  const std::string s = section(h, "summary");
  EXPECT_EQ(s.find("<th>dense</th>"), std::string::npos);
  EXPECT_NE(s.find("<tr><td>niah_single_1</td><td>1024</td><td>0.7500</td></tr>"), std::string::npos) << s;
  EXPECT_EQ(count(section(h, "accuracy"), "<polyline"), 2u);
  EXPECT_EQ(line(figure(h, "niah_single_1"), "dense").size(), 0u);
  EXPECT_EQ(line(figure(h, "niah_single_1"), "sparse").size(), 2u);
}

TEST(RulerReport, MissingFieldsAreErrorsNamingThem) {
  auto without = [](const std::string& key, int r = -1) {
    json j = sample();
    if (r < 0)
      j.erase(key);
    else
      j["results"][r].erase(key);
    return error_of([&] { rtp::eval::render_ruler_report_html(j, "runs/x/ruler.json"); });
  };
  for (const char* key : {"results", "samples", "model", "seed"}) {
    const std::string e = without(key);
    EXPECT_NE(e.find(std::string("runs/x/ruler.json has no '") + key + "'"), std::string::npos) << e;
  }
  std::string e = without("sparse_kv_bytes", 2);
  EXPECT_NE(e.find("results[2] (task 'a<&>b', length 1024) has no 'sparse_kv_bytes'"), std::string::npos) << e;
  e = without("dense_accuracy", 1);
  EXPECT_NE(e.find("results[1] (task 'niah_single_1', length 1024) has no 'dense_accuracy'"), std::string::npos) << e;
  e = without("length", 0);
  EXPECT_NE(e.find("results[0] has no 'length'"), std::string::npos) << e;
  e = without("task", 3);
  EXPECT_NE(e.find("results[3] has no 'task'"), std::string::npos) << e;

  json j = sample();
  j["results"].erase(3);  // a<&>b has no 4096 row
  e = error_of([&] { rtp::eval::render_ruler_report_html(j); });
  EXPECT_NE(e.find("no row for task 'a<&>b' at length 4096"), std::string::npos) << e;
  j = sample();
  j["results"][0]["sparse_accuracy"] = 1.5;
  e = error_of([&] { rtp::eval::render_ruler_report_html(j); });
  EXPECT_NE(e.find("'sparse_accuracy' is 1.5: expected the sparse score, a number in [0, 1]"), std::string::npos) << e;
  j = sample();
  j["results"][1]["length"] = "1024";
  e = error_of([&] { rtp::eval::render_ruler_report_html(j); });
  EXPECT_NE(e.find("'length' is \"1024\""), std::string::npos) << e;
}

}  // namespace

// Per-layer figures, when ruler.json has them: one row per layer at the longest length, mean over tasks, with a
// bar as wide as the fraction; absent without them; a bad entry is an error naming it.
TEST(RulerReport, PerLayerSectionAtTheLongestLength) {
  json j = sample();
  EXPECT_EQ(section(rtp::eval::render_ruler_report_html(j), "layers"), "");
  for (auto& r : j["results"]) {
    const bool first = r["task"] == "niah_single_1";
    r["sparse_attended_fraction_per_layer"] = first ? json{0.25, 0.5} : json{0.75, 1.0};
    r["sparse_kv_bytes_per_layer"] = first ? json{131072, 1048576} : json{131072, 3145728};
  }
  const std::string s = section(rtp::eval::render_ruler_report_html(j), "layers");
  ASSERT_NE(s, "");
  EXPECT_NE(s.find("Per layer at 4096 tokens"), std::string::npos) << s;
  // Means over the two tasks: layer 0 fraction 0.5, KV 0.125 MiB; layer 1 fraction 0.75, KV 2 MiB (the report's
  // unit is MiB: the largest figure, 4 MiB of dense KV at 4096, picks it).
  EXPECT_NE(s.find("<tr><td>0</td><td>0.500</td>"), std::string::npos) << s;
  EXPECT_NE(s.find("<tr><td>1</td><td>0.750</td>"), std::string::npos) << s;
  EXPECT_NE(s.find("width=\"60.0\""), std::string::npos) << s;
  EXPECT_NE(s.find("width=\"90.0\""), std::string::npos) << s;
  EXPECT_NE(s.find("<td>0.12</td>"), std::string::npos) << s;
  EXPECT_NE(s.find("<td>2.00</td>"), std::string::npos) << s;
  EXPECT_EQ(count(s, "<tr><td>"), 2u);

  j["results"][0]["sparse_attended_fraction_per_layer"] = json{0.25, 1.5};
  const std::string e = error_of([&] { rtp::eval::render_ruler_report_html(j); });
  EXPECT_NE(e.find("'sparse_attended_fraction_per_layer'[1] is 1.5: expected a number in [0, 1]"), std::string::npos)
      << e;
}
