#include "rtp/heads/heatmap_svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

namespace rtp::heads {

namespace {

// Viridis, 5 stops, linearly interpolated: perceptually ordered and readable in grey.
std::string colour(double v) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  if (!std::isfinite(v)) v = 0;
  v = std::clamp(v, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(v));
  const double t = v - i;
  char buf[8];
  int c[3];
  for (int k = 0; k < 3; ++k) c[k] = static_cast<int>(std::lround(stops[i][k] + t * (stops[i + 1][k] - stops[i][k])));
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c[0], c[1], c[2]);
  return buf;
}

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

}  // namespace

std::string render_heatmap_svg(const HeadProfile& p) {
  p.validate("heatmap");
  const int64_t L = p.num_layers, H = p.num_q_heads, G = p.group_size();
  const int cell = static_cast<int>(std::clamp<int64_t>(720 / std::max<int64_t>(H, 1), 6, 28));
  const int left = 70, top = 60, bar_w = 16, gap = 30;
  const int grid_w = static_cast<int>(H) * cell, grid_h = static_cast<int>(L) * cell;
  const int width = std::max(left + grid_w + gap + bar_w + 60, 640), height = top + std::max(grid_h, 60) + 60;
  // Label every k-th layer / head so labels never overlap.
  const int64_t hstep = std::max<int64_t>(1, (14 + cell - 1) / cell) * (cell < 14 ? 2 : 1);
  const int64_t lstep = std::max<int64_t>(1, (12 + cell - 1) / cell);

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << " " << height << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  o << "<defs><linearGradient id=\"cbar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (int i = 0; i <= 8; ++i)
    o << "<stop offset=\"" << fmt(i / 8.0) << "\" stop-color=\"" << colour(i / 8.0) << "\"/>";
  o << "</linearGradient></defs>\n";
  o << "<rect x=\"0\" y=\"0\" width=\"" << width << "\" height=\"" << height << "\" fill=\"white\"/>\n";
  o << "<text x=\"" << left << "\" y=\"20\" font-size=\"13\">retrieval score (copy + induction mass) per query head; "
    << "outlined: query heads of selected KV heads</text>\n";
  o << "<text x=\"" << left << "\" y=\"36\" fill=\"#555\">" << esc(p.settings.model_dir) << " | "
    << esc(p.settings.calibration) << ", " << p.settings.num_sequences << " seq x " << p.settings.seq_len
    << " tokens, span " << p.settings.span_len << ", window " << p.settings.window << ", seed " << p.settings.seed
    << " | " << esc(p.settings.selection_rule) << " " << p.settings.selection_value << "</text>\n";
  o << "<g class=\"cells\">\n";
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h) {
      const size_t i = static_cast<size_t>(l * H + h);
      o << "<rect class=\"cell\" x=\"" << left + h * cell << "\" y=\"" << top + l * cell << "\" width=\"" << cell
        << "\" height=\"" << cell << "\" fill=\"" << colour(p.retrieval[i]) << "\"><title>layer " << l
        << ", query head " << h << " (KV head " << h / G << "): retrieval " << fmt(p.retrieval[i]);
      if (!p.copy.empty()) o << " (copy " << fmt(p.copy[i]) << ", induction " << fmt(p.induction[i]) << ")";
      o << ", long-range " << fmt(p.long_range[i]) << (p.selected_q[i] ? ", selected" : "") << "</title></rect>\n";
    }
  o << "</g>\n<g class=\"selected\" fill=\"none\" stroke=\"#e8175d\" stroke-width=\"2\">\n";
  for (int64_t l = 0; l < L; ++l)
    for (int64_t h = 0; h < H; ++h)
      if (p.selected_q[l * H + h])
        o << "<rect class=\"sel\" x=\"" << left + h * cell + 1 << "\" y=\"" << top + l * cell + 1 << "\" width=\""
          << cell - 2 << "\" height=\"" << cell - 2 << "\"/>\n";
  o << "</g>\n";
  // KV-group separators.
  if (G > 1)
    for (int64_t g = 1; g < p.num_kv_heads; ++g)
      o << "<line x1=\"" << left + g * G * cell << "\" y1=\"" << top << "\" x2=\"" << left + g * G * cell
        << "\" y2=\"" << top + grid_h << "\" stroke=\"white\" stroke-width=\"1\"/>\n";
  // Axes.
  for (int64_t h = 0; h < H; h += hstep)
    o << "<text x=\"" << left + h * cell + cell / 2 << "\" y=\"" << top + grid_h + 14
      << "\" text-anchor=\"middle\">" << h << "</text>\n";
  for (int64_t l = 0; l < L; l += lstep)
    o << "<text x=\"" << left - 6 << "\" y=\"" << top + l * cell + cell / 2 + 4 << "\" text-anchor=\"end\">" << l
      << "</text>\n";
  o << "<text x=\"" << left + grid_w / 2 << "\" y=\"" << top + grid_h + 34
    << "\" text-anchor=\"middle\">query head</text>\n";
  o << "<text x=\"18\" y=\"" << top + grid_h / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 18 "
    << top + grid_h / 2 << ")\">layer</text>\n";
  // Colour bar, fixed scale [0, 1].
  const int bx = left + grid_w + gap, bh = std::max(grid_h, 60);
  o << "<rect class=\"colorbar\" x=\"" << bx << "\" y=\"" << top << "\" width=\"" << bar_w << "\" height=\"" << bh
    << "\" fill=\"url(#cbar)\" stroke=\"#333\" stroke-width=\"0.5\"/>\n";
  for (int i = 0; i <= 4; ++i)
    o << "<text x=\"" << bx + bar_w + 4 << "\" y=\"" << top + bh - bh * i / 4 + 4 << "\">" << fmt(i / 4.0).substr(0, 4)
      << "</text>\n";
  o << "</svg>\n";
  return o.str();
}

void write_heatmap_svg(const HeadProfile& profile, const std::string& path) {
  write_file_atomic(path, render_heatmap_svg(profile));
}

}  // namespace rtp::heads
