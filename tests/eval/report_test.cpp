// The HTML report: sections present, embedded heads picture, charts drawn from the data, escaping.
#include "rtp/eval/report.h"

#include <gtest/gtest.h>

#include "rtp/core/error.h"

namespace {

rtp::eval::ReportData sample() {
  rtp::eval::ReportData d;
  d.model_dir = "runs/<conv>";
  d.heads = rtp::sparse::HeadMap::all_streaming(2, 3, 2);
  d.heads.retrieval[1][2] = 1;
  d.density = {{0.1, 0.2, 0.3}, {0.4, 0.5, 1.0}};
  d.density_length = 256;
  d.lengths = {128, 256};
  d.series = {{"dense", {1.0, 0.75}}, {"sparse", {0.5, 0.25}}, {"random heads", {0.0, 0.0}}};
  d.summary = {{"dense accuracy", "0.8750"}, {"sparse accuracy", "0.3750"}};
  d.notes = {"a note & more"};
  return d;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(Report, HasEverySectionAndIsSelfContained) {
  const std::string h = rtp::eval::render_report_html(sample());
  for (const char* id : {"id=\"summary\"", "id=\"heads\"", "id=\"density\"", "id=\"accuracy\""})
    EXPECT_NE(h.find(id), std::string::npos) << id;
  EXPECT_EQ(h.find("<script"), std::string::npos);
  EXPECT_EQ(h.find("http://") , h.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  EXPECT_NE(h.find("runs/&lt;conv&gt;"), std::string::npos);
  EXPECT_NE(h.find("a note &amp; more"), std::string::npos);
  EXPECT_NE(h.find("1 of 6 KV heads"), std::string::npos);
  // head map drawn from the map: one cell per (layer, KV head); density: one per cell; accuracy: 3 series
  EXPECT_NE(h.find("class=\"headmap\""), std::string::npos);
  EXPECT_EQ(count(h, "layer 1, KV head 2: retrieval"), 1u);
  EXPECT_EQ(count(h, "layer 0, KV head 0: streaming"), 1u);
  EXPECT_NE(h.find("layer 1, KV head 2: 1.0000 (retrieval)"), std::string::npos);
  EXPECT_EQ(count(h, "<polyline"), 3u);
  EXPECT_NE(h.find("sparse at 256: 0.2500"), std::string::npos);
  EXPECT_NE(h.find("<td>0.7500</td>"), std::string::npos);
}

TEST(Report, EmbedsTheIdentifyHeadsPictureWithoutItsProlog) {
  auto d = sample();
  d.heads_svg = "<?xml version=\"1.0\"?>\n<!-- made by identify-heads -->\n<svg xmlns=\"http://www.w3.org/2000/svg\">"
                "<rect class=\"cell\" id=\"from-profile\"/></svg>\n";
  d.heads_svg_source = "heads.svg";
  const std::string h = rtp::eval::render_report_html(d);
  EXPECT_NE(h.find("id=\"from-profile\""), std::string::npos);
  EXPECT_EQ(h.find("<?xml"), std::string::npos);
  EXPECT_EQ(h.find("class=\"headmap\""), std::string::npos);  // not drawn when the picture is given
  EXPECT_NE(h.find("heads.svg"), std::string::npos);
  d.heads_svg = "not a picture";
  EXPECT_THROW(rtp::eval::render_report_html(d), rtp::Error);
}

TEST(Report, MissingDensitySaysSo) {
  auto d = sample();
  d.density.clear();
  const std::string h = rtp::eval::render_report_html(d);
  const size_t sec = h.find("id=\"density\"");
  ASSERT_NE(sec, std::string::npos);
  EXPECT_NE(h.find("Not measured", sec), std::string::npos);
}

}  // namespace
