#include "rtp/eval/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

namespace rtp::eval {

using html::fmt;

namespace {

// White (0) -> deep blue (1), readable text colour chosen by luminance.
std::string ramp(double v) {
  v = std::clamp(std::isfinite(v) ? v : 0.0, 0.0, 1.0);
  const int r = static_cast<int>(std::lround(247 - v * (247 - 8)));
  const int g = static_cast<int>(std::lround(251 - v * (251 - 48)));
  const int b = static_cast<int>(std::lround(255 - v * (255 - 107)));
  char buf[16];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", r, g, b);
  return buf;
}

}  // namespace

std::string strip_svg_prolog(const std::string& svg) {
  const size_t begin = svg.find("<svg");
  RTP_CHECK(begin != std::string::npos, "heads picture is not an SVG document (no <svg element)");
  const size_t end = svg.rfind("</svg>");
  RTP_CHECK(end != std::string::npos && end > begin, "heads picture: SVG element is not closed");
  return svg.substr(begin, end + 6 - begin);
}

std::string render_head_map_svg(const sparse::HeadMap& h) {
  const int cell = 22, left = 70, top = 30;
  const int w = left + static_cast<int>(h.num_kv_heads) * cell + 20;
  const int ht = top + static_cast<int>(h.num_layers) * cell + 40;
  std::string s = str_cat("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"headmap\" width=\"", w, "\" height=\"",
                          ht, "\" viewBox=\"0 0 ", w, " ", ht, "\" font-family=\"sans-serif\" font-size=\"11\">");
  s += str_cat("<text x=\"", left, "\" y=\"14\">KV head &#8594;</text>");
  for (int64_t g = 0; g < h.num_kv_heads; ++g)
    s += str_cat("<text x=\"", left + g * cell + cell / 2, "\" y=\"", top - 4, "\" text-anchor=\"middle\">", g,
                 "</text>");
  for (int64_t l = 0; l < h.num_layers; ++l) {
    s += str_cat("<text x=\"", left - 6, "\" y=\"", top + l * cell + cell / 2 + 4, "\" text-anchor=\"end\">layer ", l,
                 "</text>");
    for (int64_t g = 0; g < h.num_kv_heads; ++g) {
      const bool r = h.is_retrieval(l, g);
      s += str_cat("<rect class=\"cell\" x=\"", left + g * cell, "\" y=\"", top + l * cell, "\" width=\"", cell - 2,
                   "\" height=\"", cell - 2, "\" fill=\"", r ? "#d62728" : "#e8eef6",
                   "\" stroke=\"#999\"><title>layer ", l, ", KV head ", g, ": ", r ? "retrieval" : "streaming",
                   "</title></rect>");
    }
  }
  const int ly = top + static_cast<int>(h.num_layers) * cell + 16;
  s += str_cat("<rect x=\"", left, "\" y=\"", ly - 10, "\" width=\"12\" height=\"12\" fill=\"#d62728\"/>",
               "<text x=\"", left + 16, "\" y=\"", ly, "\">retrieval</text>", "<rect x=\"", left + 90, "\" y=\"",
               ly - 10, "\" width=\"12\" height=\"12\" fill=\"#e8eef6\" stroke=\"#999\"/>", "<text x=\"", left + 106,
               "\" y=\"", ly, "\">streaming</text>");
  s += "</svg>";
  return s;
}

std::string render_density_svg(const std::vector<std::vector<double>>& d, const sparse::HeadMap& h) {
  const int cell = 44, left = 70, top = 30;
  const int64_t L = static_cast<int64_t>(d.size());
  const int64_t H = L ? static_cast<int64_t>(d[0].size()) : 0;
  const int w = left + static_cast<int>(H) * cell + 20, ht = top + static_cast<int>(L) * cell + 20;
  std::string s = str_cat("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"density\" width=\"", w, "\" height=\"",
                          ht, "\" viewBox=\"0 0 ", w, " ", ht, "\" font-family=\"sans-serif\" font-size=\"11\">");
  s += str_cat("<text x=\"", left, "\" y=\"14\">KV head &#8594; (cell: attended / causal key pairs; ",
               "bold outline: retrieval head)</text>");
  for (int64_t g = 0; g < H; ++g)
    s += str_cat("<text x=\"", left + g * cell + cell / 2, "\" y=\"", top - 4, "\" text-anchor=\"middle\">", g,
                 "</text>");
  for (int64_t l = 0; l < L; ++l) {
    s += str_cat("<text x=\"", left - 6, "\" y=\"", top + l * cell + cell / 2 + 4, "\" text-anchor=\"end\">layer ", l,
                 "</text>");
    for (int64_t g = 0; g < H && g < static_cast<int64_t>(d[l].size()); ++g) {
      const double v = d[l][g];
      const bool ret = l < h.num_layers && g < h.num_kv_heads && h.is_retrieval(l, g);
      s += str_cat("<rect class=\"cell\" x=\"", left + g * cell, "\" y=\"", top + l * cell, "\" width=\"", cell - 2,
                   "\" height=\"", cell - 2, "\" fill=\"", ramp(v), "\" stroke=\"", ret ? "#d62728" : "#bbb",
                   "\" stroke-width=\"", ret ? 3 : 1, "\"><title>layer ", l, ", KV head ", g, ": ", fmt("%.4f", v),
                   ret ? " (retrieval)" : " (streaming)", "</title></rect>");
      s += str_cat("<text x=\"", left + g * cell + (cell - 2) / 2, "\" y=\"", top + l * cell + cell / 2 + 3,
                   "\" text-anchor=\"middle\" fill=\"", v > 0.55 ? "#fff" : "#000", "\">", fmt("%.2f", v), "</text>");
    }
  }
  s += "</svg>";
  return s;
}

std::string render_accuracy_svg(const std::vector<int64_t>& lengths, const std::vector<AccuracySeries>& series) {
  html::LinePlot p;
  p.css_class = "accuracy";
  p.lengths = lengths;
  p.y_label = "exact-match accuracy";
  // The third series is the random-heads baseline: dashed, so that it reads as a reference, not a result.
  for (size_t k = 0; k < series.size(); ++k) p.series.push_back({series[k].name, series[k].accuracy, "", k == 2});
  return html::render_line_plot_svg(p);
}

std::string render_report_html(const ReportData& d) {
  std::string h = html::page_begin(d.title);
  if (!d.model_dir.empty()) h += "<p>Model: <code>" + html_escape(d.model_dir) + "</code></p>\n";

  h += "<section id=\"summary\"><h2>Summary</h2>\n<table>";
  for (const auto& [k, v] : d.summary) h += "<tr><th>" + html_escape(k) + "</th><td>" + html_escape(v) + "</td></tr>";
  h += "</table>\n";
  for (const auto& n : d.notes) h += "<p class=\"note\">" + html_escape(n) + "</p>\n";
  h += "</section>\n";

  h += "<section id=\"heads\"><h2>Retrieval heads</h2>\n";
  if (!d.heads_svg.empty()) {
    h += strip_svg_prolog(d.heads_svg) + "\n";
    if (!d.heads_svg_source.empty())
      h += "<p class=\"note\">Head profile picture from <code>" + html_escape(d.heads_svg_source) + "</code>.</p>\n";
  } else if (d.heads.num_layers > 0) {
    h += render_head_map_svg(d.heads) + "\n";
  } else {
    h += "<p>No head map.</p>\n";
  }
  if (d.heads.num_layers > 0)
    h += str_cat("<p>", d.heads.count_retrieval(), " of ", d.heads.num_layers * d.heads.num_kv_heads,
                 " KV heads are retrieval heads (", fmt("%.1f", 100 * d.heads.retrieval_fraction()), "%).</p>\n");
  h += "</section>\n";

  h += "<section id=\"density\"><h2>Attention density per layer and KV head</h2>\n";
  if (!d.density.empty()) {
    if (d.density_length > 0)
      h += str_cat("<p>Fraction of causal key pairs attended, at sequence length ", d.density_length, ".</p>\n");
    h += render_density_svg(d.density, d.heads) + "\n";
  } else {
    h += "<p>Not measured.</p>\n";
  }
  h += "</section>\n";

  h += "<section id=\"accuracy\"><h2>Accuracy against sequence length</h2>\n";
  h += render_accuracy_svg(d.lengths, d.series) + "\n<table><tr><th>length</th>";
  for (const auto& se : d.series) h += "<th>" + html_escape(se.name) + "</th>";
  h += "</tr>";
  for (size_t i = 0; i < d.lengths.size(); ++i) {
    h += str_cat("<tr><td>", d.lengths[i], "</td>");
    for (const auto& se : d.series)
      h += "<td>" + (i < se.accuracy.size() ? fmt("%.4f", se.accuracy[i]) : std::string("-")) + "</td>";
    h += "</tr>";
  }
  h += "</table>\n</section>\n" + html::page_end();
  return h;
}

void write_report_html(const ReportData& data, const std::string& path) {
  write_file_atomic(path, render_report_html(data));
}

}  // namespace rtp::eval
