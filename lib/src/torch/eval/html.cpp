#include "rtp/eval/html.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "rtp/core/error.h"

namespace rtp::eval {

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace html {

namespace {

const char* const kSeriesColours[] = {"#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd"};

// The smallest of 1, 2, 4, 6, 8 times a power of ten that is >= v, so that quarter ticks are round numbers.
double round_up(double v) {
  if (!(v > 0) || !std::isfinite(v)) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double f : {1.0, 2.0, 4.0, 6.0, 8.0})
    if (f * p >= v * (1 - 1e-12)) return f * p;
  return 10 * p;
}

}  // namespace

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

const char* series_colour(size_t k) { return kSeriesColours[k % (sizeof kSeriesColours / sizeof *kSeriesColours)]; }

std::string page_begin(const std::string& title) {
  return "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
         "</title>\n<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
         "th{background:#f3f3f3}section{margin-bottom:2.5em}.note{color:#555;font-size:0.9em}"
         "figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-weight:bold}</style></head><body>\n"
         "<h1>" + html_escape(title) + "</h1>\n";
}

std::string page_end() { return "</body></html>\n"; }

std::string render_line_plot_svg(const LinePlot& p) {
  size_t longest_name = 0;
  double largest = 0;
  for (const auto& se : p.series) {
    longest_name = std::max(longest_name, se.name.size());
    for (double v : se.values)
      if (std::isfinite(v)) largest = std::max(largest, v);
  }
  const double y_max = p.y_max > 0 ? p.y_max : round_up(largest);
  // The legend sits right of the plot; ~6.5 px per character of an 11 px sans-serif name.
  const int left = 62, top = 20, pw = 420, ph = 220;
  const int w = left + pw + 50 + static_cast<int>(6.5 * static_cast<double>(longest_name)), ht = top + ph + 50;
  std::string s = str_cat("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"", html_escape(p.css_class),
                          "\" width=\"", w, "\" height=\"", ht, "\" viewBox=\"0 0 ", w, " ", ht,
                          "\" font-family=\"sans-serif\" font-size=\"11\">");
  s += str_cat("<rect x=\"", left, "\" y=\"", top, "\" width=\"", pw, "\" height=\"", ph,
               "\" fill=\"none\" stroke=\"#333\"/>");
  for (int i = 0; i <= 4; ++i) {  // y grid at quarters of y_max
    const double y = top + ph - ph * i / 4.0;
    s += str_cat("<line x1=\"", left, "\" x2=\"", left + pw, "\" y1=\"", y, "\" y2=\"", y,
                 "\" stroke=\"#ddd\"/><text x=\"", left - 6, "\" y=\"", y + 4, "\" text-anchor=\"end\">",
                 fmt(p.tick_format, y_max * i / 4.0), "</text>");
  }
  const size_t n = p.lengths.size();
  auto xat = [&](size_t i) { return n <= 1 ? left + pw / 2.0 : left + 20 + (pw - 40) * double(i) / double(n - 1); };
  auto yat = [&](double v) { return top + ph - ph * std::clamp(std::isfinite(v) ? v : 0.0, 0.0, y_max) / y_max; };
  for (size_t i = 0; i < n; ++i)
    s += str_cat("<text x=\"", xat(i), "\" y=\"", top + ph + 16, "\" text-anchor=\"middle\">", p.lengths[i],
                 "</text>");
  s += str_cat("<text x=\"", left + pw / 2, "\" y=\"", top + ph + 36, "\" text-anchor=\"middle\">",
               html_escape(p.x_label), "</text>");
  s += str_cat("<text x=\"12\" y=\"", top + ph / 2, "\" transform=\"rotate(-90 12 ", top + ph / 2,
               ")\" text-anchor=\"middle\">", html_escape(p.y_label), "</text>");
  for (size_t k = 0; k < p.series.size(); ++k) {
    const auto& se = p.series[k];
    const std::string col = se.colour.empty() ? series_colour(k) : se.colour;
    const size_t m = std::min(n, se.values.size());
    std::string pts;
    for (size_t i = 0; i < m; ++i)
      pts += str_cat(i ? " " : "", fmt("%.1f", xat(i)), ",", fmt("%.1f", yat(se.values[i])));
    s += str_cat("<g class=\"series\"><polyline fill=\"none\" stroke=\"", col, "\" stroke-width=\"2\"",
                 se.dashed ? " stroke-dasharray=\"5,3\"" : "", " points=\"", pts, "\"><title>", html_escape(se.name),
                 "</title></polyline>");
    for (size_t i = 0; i < m; ++i)
      s += str_cat("<circle cx=\"", fmt("%.1f", xat(i)), "\" cy=\"", fmt("%.1f", yat(se.values[i])),
                   "\" r=\"3.5\" fill=\"", col, "\"><title>", html_escape(se.name), " at ", p.lengths[i], ": ",
                   fmt(p.value_format, se.values[i]), "</title></circle>");
    const int ly = top + 14 + static_cast<int>(k) * 18;
    s += str_cat("<line x1=\"", left + pw + 12, "\" x2=\"", left + pw + 36, "\" y1=\"", ly - 4, "\" y2=\"", ly - 4,
                 "\" stroke=\"", col, "\" stroke-width=\"2\"", se.dashed ? " stroke-dasharray=\"5,3\"" : "",
                 "/><text x=\"", left + pw + 42, "\" y=\"", ly, "\">", html_escape(se.name), "</text></g>");
  }
  s += "</svg>";
  return s;
}

}  // namespace html
}  // namespace rtp::eval
