#pragma once
// Building blocks shared by the HTML reports (rtp/eval/report.h: the toy evaluation; rtp/eval/ruler_report.h:
// RULER runs): escaping, number formatting, the page frame with its inline CSS, and a line plot drawn as inline
// SVG, so that the reports look alike and none carries its own copy. Pure string building, no torch.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rtp::eval {

// Escapes &, <, >, " and ' for HTML text and attribute values.
std::string html_escape(const std::string& s);

namespace html {

// One number through a printf format ("%.4f").
std::string fmt(const char* format, double v);

// The colour of the k-th series of a plot (cycles after five).
const char* series_colour(size_t k);

// "<!DOCTYPE html>...<body><h1>title</h1>" with the reports' inline CSS, and the matching end.
std::string page_begin(const std::string& title);
std::string page_end();

struct LineSeries {
  std::string name;
  std::vector<double> values;  // one per LinePlot::lengths entry (fewer: the line stops early)
  std::string colour;          // empty: series_colour(position in LinePlot::series)
  bool dashed = false;
};

struct LinePlot {
  std::string css_class;         // class of the <svg> element
  std::vector<int64_t> lengths;  // x axis: evenly spaced points labelled with these values
  std::vector<LineSeries> series;
  std::string x_label = "sequence length (tokens)";
  std::string y_label;
  double y_max = 1;                    // y axis from 0 to y_max; <= 0: a round number at or above every value
  const char* tick_format = "%.2f";    // y tick labels
  const char* value_format = "%.4f";   // values in the points' tooltips
};

// Per series one <polyline> (its <title> the series' name) with a <circle> per point (title "NAME at LENGTH:
// VALUE"), and a legend entry. Values are clamped to [0, y_max]; a larger value reaches the top.
std::string render_line_plot_svg(const LinePlot& plot);

}  // namespace html
}  // namespace rtp::eval
