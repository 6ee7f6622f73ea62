// Head selection on hand-made scores, the HDF5 head profile (round trip, errors) and the SVG heatmap.
#include <dirent.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include <hdf5.h>

#include <fstream>
#include <regex>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/heads/head_profile.h"
#include "rtp/heads/head_selection.h"
#include "rtp/heads/heatmap_svg.h"

namespace {

using rtp::heads::Aggregation;
using rtp::heads::SelectionRule;
using U8 = std::vector<uint8_t>;

// 2 layers, 4 query heads, 2 KV heads (group 2).
//   max over groups:  {0.9, 0.3, 0.6, 0.35}    mean: {0.5, 0.25, 0.3, 0.35}
const std::vector<float> kRetrieval = {0.1f, 0.9f, 0.2f, 0.3f, 0.6f, 0.0f, 0.35f, 0.35f};
const std::vector<float> kZeros(8, 0.0f);

std::string tmp_dir() {
  const std::string d = std::string(RTP_BINARY_DIR) + "/tmp-heads-test";
  rtp::make_directories(d);
  return d;
}

using rtp::testing::error_of;

TEST(HeadSelection, AggregateMaxAndMean) {
  EXPECT_EQ(rtp::heads::aggregate_to_kv(kRetrieval, 2, 4, 2, Aggregation::kMax),
            (std::vector<float>{0.9f, 0.3f, 0.6f, 0.35f}));
  auto mean = rtp::heads::aggregate_to_kv(kRetrieval, 2, 4, 2, Aggregation::kMean);
  const std::vector<float> want = {0.5f, 0.25f, 0.3f, 0.35f};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(mean[i], want[i], 1e-6);
  EXPECT_THROW(rtp::heads::aggregate_to_kv(kRetrieval, 2, 4, 3, Aggregation::kMax), rtp::Error);
  EXPECT_THROW(rtp::heads::aggregate_to_kv(kRetrieval, 3, 4, 2, Aggregation::kMax), rtp::Error);
}

TEST(HeadSelection, RankBreaksTiesByLongRangeThenIndex) {
  EXPECT_EQ(rtp::heads::rank_heads({0.5f, 0.7f, 0.5f, 0.5f}, {0.1f, 0.0f, 0.3f, 0.1f}),
            (std::vector<int64_t>{1, 2, 0, 3}));
}

TEST(HeadSelection, ByFraction) {
  SelectionRule r;
  r.fraction = 0.5;  // 2 of 4 KV heads
  auto s = rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r);
  EXPECT_EQ(s.selected_kv, (U8{1, 0, 1, 0}));
  EXPECT_EQ(s.selected_q, (U8{1, 1, 0, 0, 1, 1, 0, 0}));
  r.aggregation = Aggregation::kMean;
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 0, 1}));
  r.aggregation = Aggregation::kMax;
  r.fraction = 0.15;  // round(0.6) = 1
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 0, 0}));
  r.fraction = 0.0;  // at least one
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 0, 0}));
  r.fraction = 1.0;
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 1, 1, 1}));
  // Long-range mass breaks the tie between equal retrieval scores.
  r.fraction = 0.25;
  std::vector<float> flat(8, 0.5f), lr = {0, 0, 0, 0, 0, 0, 0.2f, 0};
  EXPECT_EQ(rtp::heads::select_heads(flat, lr, 2, 4, 2, r).selected_kv, (U8{0, 0, 0, 1}));
  r.fraction = 1.5;
  EXPECT_THROW(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r), rtp::Error);
}

TEST(HeadSelection, ByKvBudget) {
  SelectionRule r;
  r.kind = SelectionRule::Kind::kBudget;
  r.budget_context = 100;
  r.head_dim = 8;
  r.bytes_per_element = 2;
  ASSERT_EQ(r.bytes_per_kv_head(), 3200);  // 100 tokens x (K + V) x 8 x 2 bytes
  r.budget_bytes = 6399;                   // one head fits, two do not
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 0, 0}));
  r.budget_bytes = 6400;
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 1, 0}));
  r.budget_bytes = 9600;  // the third is KV head 1 of layer 1 (0.35)
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 0, 1, 1}));
  r.budget_bytes = int64_t(1) << 40;
  EXPECT_EQ(rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r).selected_kv, (U8{1, 1, 1, 1}));
  r.budget_bytes = 3199;
  const auto msg = error_of([&] { rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r); });
  EXPECT_NE(msg.find("holds no retrieval KV head"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3200 bytes"), std::string::npos) << msg;
}

TEST(HeadSelection, PerQueryHead) {
  SelectionRule r;
  r.per_query_head = true;
  r.fraction = 0.25;  // 2 of 8 query heads: 0.9 (layer 0 head 1), 0.6 (layer 1 head 0)
  auto s = rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r);
  EXPECT_EQ(s.selected_q, (U8{0, 1, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(s.selected_kv, (U8{1, 0, 1, 0}));  // implied
  // Budget of 2 KV heads: 0.9 (KV 0:0), 0.6 (KV 1:0), 0.35 layer 1 head 2 needs a third KV head: stop there.
  r.kind = SelectionRule::Kind::kBudget;
  r.budget_context = 100;
  r.head_dim = 8;
  r.budget_bytes = 6400;
  s = rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r);
  EXPECT_EQ(s.selected_q, (U8{0, 1, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(s.selected_kv, (U8{1, 0, 1, 0}));
  // With 3 KV heads the 0.35 pair of layer 1 shares KV head 1: both come in, then 0.3 (layer 0 head 3) needs a
  // fourth.
  r.budget_bytes = 9600;
  s = rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r);
  EXPECT_EQ(s.selected_q, (U8{0, 1, 0, 0, 1, 0, 1, 1}));
  EXPECT_EQ(s.selected_kv, (U8{1, 0, 1, 1}));
}

TEST(HeadSelection, ParseByteSize) {
  EXPECT_EQ(rtp::heads::parse_byte_size("1000"), 1000);
  EXPECT_EQ(rtp::heads::parse_byte_size("1.5K"), 1536);
  EXPECT_EQ(rtp::heads::parse_byte_size("512MiB"), 512LL << 20);
  EXPECT_EQ(rtp::heads::parse_byte_size("2G"), 2LL << 30);
  EXPECT_EQ(rtp::heads::parse_byte_size("2gb"), 2LL << 30);
  EXPECT_THROW(rtp::heads::parse_byte_size("lots"), rtp::Error);
  EXPECT_THROW(rtp::heads::parse_byte_size("5X"), rtp::Error);
  EXPECT_THROW(rtp::heads::parse_byte_size("-3"), rtp::Error);
}

rtp::heads::HeadProfile sample_profile() {
  SelectionRule r;
  r.fraction = 0.5;
  auto s = rtp::heads::select_heads(kRetrieval, kZeros, 2, 4, 2, r);
  rtp::heads::HeadProfile p;
  p.num_layers = 2;
  p.num_q_heads = 4;
  p.num_kv_heads = 2;
  p.retrieval = kRetrieval;
  p.long_range = {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f, 0.07f, 0.08f};
  p.copy = {0.05f, 0.1f, 0.1f, 0.1f, 0.3f, 0, 0.2f, 0.15f};
  p.induction = {0.05f, 0.8f, 0.1f, 0.2f, 0.3f, 0, 0.15f, 0.2f};
  p.kv_retrieval = s.kv_retrieval;
  p.kv_long_range = s.kv_long_range;
  p.selected_kv = s.selected_kv;
  p.selected_q = s.selected_q;
  p.settings.model_dir = "data/fixtures/models/qwen3-tiny <&>";
  p.settings.num_sequences = 8;
  p.settings.seq_len = 512;
  p.settings.span_len = 64;
  p.settings.window = 128;
  p.settings.sink = 4;
  p.settings.seed = 77;
  p.settings.selection_value = 0.5;
  return p;
}

int count_tmp_files(const std::string& dir, const std::string& stem) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind(stem + ".tmp", 0) == 0) ++n;
    closedir(d);
  }
  return n;
}

TEST(HeadProfile, Hdf5RoundTrip) {
  const auto p = sample_profile();
  const std::string path = tmp_dir() + "/round.h5";
  rtp::heads::save_head_profile(p, path);
  EXPECT_EQ(count_tmp_files(tmp_dir(), "round.h5"), 0);
  const auto q = rtp::heads::load_head_profile(path);
  EXPECT_EQ(q.num_layers, 2);
  EXPECT_EQ(q.num_q_heads, 4);
  EXPECT_EQ(q.num_kv_heads, 2);
  EXPECT_EQ(q.retrieval, p.retrieval);
  EXPECT_EQ(q.long_range, p.long_range);
  EXPECT_EQ(q.copy, p.copy);
  EXPECT_EQ(q.induction, p.induction);
  EXPECT_EQ(q.kv_retrieval, p.kv_retrieval);
  EXPECT_EQ(q.kv_long_range, p.kv_long_range);
  EXPECT_EQ(q.selected_kv, p.selected_kv);
  EXPECT_EQ(q.selected_q, p.selected_q);
  EXPECT_EQ(q.settings.model_dir, p.settings.model_dir);
  EXPECT_EQ(q.settings.calibration, "toy");
  EXPECT_EQ(q.settings.text_source, "");
  EXPECT_EQ(q.settings.seq_len, 512);
  EXPECT_EQ(q.settings.span_len, 64);
  EXPECT_EQ(q.settings.window, 128);
  EXPECT_EQ(q.settings.sink, 4);
  EXPECT_EQ(q.settings.seed, 77u);
  EXPECT_EQ(q.settings.selection_rule, "fraction");
  EXPECT_EQ(q.settings.selection_value, 0.5);
  EXPECT_EQ(q.settings.aggregation, "max");
  EXPECT_EQ(q.settings.format_version, 1);
  EXPECT_EQ(q.settings.tool_version, rtp::heads::kHeadsToolVersion);

  auto m = rtp::heads::head_map_from_profile(q);
  EXPECT_EQ(m.num_layers, 2);
  EXPECT_EQ(m.num_kv_heads, 2);
  EXPECT_EQ(m.group_size, 2);
  EXPECT_EQ(m.retrieval, (std::vector<U8>{{1, 0}, {1, 0}}));
}

TEST(HeadProfile, LoadErrorsAreClear) {
  const std::string dir = tmp_dir();
  auto msg = error_of([&] { rtp::heads::load_head_profile(dir + "/nope.h5"); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;

  rtp::write_file_atomic(dir + "/text.h5", "not hdf5\n");
  msg = error_of([&] { rtp::heads::load_head_profile(dir + "/text.h5"); });
  EXPECT_NE(msg.find("is not an HDF5 file"), std::string::npos) << msg;

  const std::string missing = dir + "/missing.h5";
  rtp::heads::save_head_profile(sample_profile(), missing);
  {
    hid_t f = H5Fopen(missing.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, "/kv_scores/retrieval", H5P_DEFAULT), 0);
    H5Fclose(f);
  }
  msg = error_of([&] { rtp::heads::load_head_profile(missing); });
  EXPECT_NE(msg.find("missing dataset /kv_scores/retrieval"), std::string::npos) << msg;

  const std::string shape = dir + "/shape.h5";
  rtp::heads::save_head_profile(sample_profile(), shape);
  {
    hid_t f = H5Fopen(shape.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, "/selected_kv", H5P_DEFAULT), 0);
    hsize_t dims[2] = {2, 3};
    hid_t sp = H5Screate_simple(2, dims, nullptr);
    hid_t ds = H5Dcreate2(f, "/selected_kv", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
  }
  msg = error_of([&] { rtp::heads::load_head_profile(shape); });
  EXPECT_NE(msg.find("/selected_kv has the wrong shape"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[2, 2], found [2, 3]"), std::string::npos) << msg;

  auto bad = sample_profile();
  bad.selected_q[2] = 1;  // a query head whose KV head is not selected
  msg = error_of([&] { rtp::heads::save_head_profile(bad, dir + "/bad.h5"); });
  EXPECT_NE(msg.find("its KV head 1 is not"), std::string::npos) << msg;
  EXPECT_FALSE(rtp::file_exists(dir + "/bad.h5"));
}

// Minimal XML well-formedness: every tag closes in order, attributes quoted, one root <svg>.
bool xml_well_formed(const std::string& s, std::string* why) {
  std::vector<std::string> stack;
  size_t i = 0;
  int roots = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    const size_t j = s.find('>', i);
    if (j == std::string::npos) return *why = "unterminated tag", false;
    std::string tag = s.substr(i + 1, j - i - 1);
    i = j + 1;
    if (tag.empty()) return *why = "empty tag", false;
    if (std::count(tag.begin(), tag.end(), '"') % 2) return *why = "odd quotes in <" + tag + ">", false;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return *why = "mismatched </" + tag.substr(1) + ">", false;
      stack.pop_back();
      continue;
    }
    const bool self = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (stack.empty()) ++roots;
    if (!self) stack.push_back(name);
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back() + ">", false;
  if (roots != 1) return *why = "expected one root element", false;
  return true;
}

size_t count_of(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t i = s.find(needle); i != std::string::npos; i = s.find(needle, i + 1)) ++n;
  return n;
}

TEST(Heatmap, SvgIsWellFormedWithOneCellPerHead) {
  const auto p = sample_profile();
  const std::string path = tmp_dir() + "/heads.svg";
  rtp::heads::write_heatmap_svg(p, path);
  const std::string svg = rtp::read_text_file(path);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  std::string why;
  EXPECT_TRUE(xml_well_formed(svg, &why)) << why;
  EXPECT_EQ(count_of(svg, "class=\"cell\""), 8u);  // 2 layers x 4 query heads
  EXPECT_EQ(count_of(svg, "class=\"sel\""), 4u);   // the query heads of 2 selected KV heads
  EXPECT_EQ(count_of(svg, "class=\"colorbar\""), 1u);
  EXPECT_NE(svg.find(">query head<"), std::string::npos);
  EXPECT_NE(svg.find(">layer<"), std::string::npos);
  EXPECT_NE(svg.find("&lt;&amp;&gt;"), std::string::npos);  // the model dir is escaped
  EXPECT_NE(svg.find("layer 0, query head 1 (KV head 0): retrieval 0.900"), std::string::npos);
  EXPECT_FALSE(xml_well_formed("<svg><rect></svg>", &why));
}

}  // namespace
