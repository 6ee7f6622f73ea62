#pragma once
// The evaluation report: one self-contained HTML file (inline CSS and SVG, no scripts, no external resources)
// with four sections, each a <section id="...">:
//   summary   dense vs sparse (vs random heads) accuracy, attention fraction, indexer recall, KV memory
//   heads     the head heatmap: the SVG rtpurbo-identify-heads wrote (embedded as is) if given, else a map
//             drawn from the head map (rows layers, columns KV heads, retrieval heads filled)
//   density   attention fraction per (layer, KV head): attended / causal key pairs
//   accuracy  toy exact-match accuracy against sequence length for dense, sparse and random heads
// Pure string building, no torch: tests render it from hand-made data.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rtp/eval/html.h"  // html_escape and the plot shared with the RULER report
#include "rtp/sparse/head_map.h"

namespace rtp::eval {

struct AccuracySeries {
  std::string name;               // "dense", "sparse", "random heads"
  std::vector<double> accuracy;   // one per ReportData::lengths entry, in [0, 1]
};

struct ReportData {
  std::string title = "RTPurbo evaluation";
  std::string model_dir;
  sparse::HeadMap heads;
  std::string heads_svg;          // an SVG document to embed (XML prolog allowed); empty: draw from `heads`
  std::string heads_svg_source;   // where heads_svg came from (shown under it)
  std::vector<std::vector<double>> density;  // [layer][kv head] in [0, 1]; empty: section says "not measured"
  int64_t density_length = 0;     // the sequence length the density was measured at
  std::vector<int64_t> lengths;
  std::vector<AccuracySeries> series;
  std::vector<std::pair<std::string, std::string>> summary;  // (label, value) rows
  std::vector<std::string> notes;  // free-text lines under the summary
};

// An SVG document reduced to its <svg ...>...</svg> element (prolog, DOCTYPE and comments before it dropped).
std::string strip_svg_prolog(const std::string& svg);

std::string render_head_map_svg(const sparse::HeadMap& heads);
std::string render_density_svg(const std::vector<std::vector<double>>& density, const sparse::HeadMap& heads);
std::string render_accuracy_svg(const std::vector<int64_t>& lengths, const std::vector<AccuracySeries>& series);

std::string render_report_html(const ReportData& data);
void write_report_html(const ReportData& data, const std::string& path);  // atomic

}  // namespace rtp::eval
