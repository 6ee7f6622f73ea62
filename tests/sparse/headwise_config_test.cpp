// RTP-LLM headwise_config and rtpurbo.json (de)serialisation: round trips, consistency errors, version refusal.
#include "rtp/sparse/headwise_config.h"

#include <gtest/gtest.h>

#include "test_util.h"

#include "rtp/core/error.h"
#include "rtp/model/model_config.h"
#include "rtp/sparse/converted_model.h"

namespace {

using nlohmann::json;
using rtp::sparse::HeadMap;
using rtp::sparse::HeadwiseReadMode;

rtp::model::ModelConfig config_3x4x2() {  // 3 layers, 4 query heads, 2 KV heads (group size 2)
  rtp::model::ModelConfig c;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  return c;
}

HeadMap sample_map() {
  HeadMap m = HeadMap::all_streaming(3, 2, 2);
  m.retrieval[0][1] = 1;
  m.retrieval[2][0] = 1;
  m.retrieval[2][1] = 1;
  return m;
}

using rtp::testing::error_of;

TEST(HeadwiseConfig, WritesOneFlagPerQueryHeadAndSettings) {
  rtp::sparse::SparseSettings s;
  s.sink = 4;
  s.window = 8192;
  s.dense_below = 16384;
  const json j = rtp::sparse::headwise_config_to_json(sample_map(), s);
  EXPECT_EQ(j["sink_token_num"], 4);
  EXPECT_EQ(j["swa_token_num"], 8191);  // window_left excludes the query itself
  EXPECT_EQ(j["seqlen_threshold"], 16384);
  EXPECT_EQ(j["0"], json({0, 0, 1, 1}));
  EXPECT_EQ(j["1"], json({0, 0, 0, 0}));
  EXPECT_EQ(j["2"], json({1, 1, 1, 1}));
}

TEST(HeadwiseConfig, RoundTripPerKvHead) {
  rtp::sparse::SparseSettings s;
  s.sink = 2;
  s.window = 100;
  s.dense_below = 7;
  const json j = rtp::sparse::headwise_config_to_json(sample_map(), s);
  auto hw = rtp::sparse::read_headwise_config(j, config_3x4x2(), HeadwiseReadMode::kPerKvHead, "cfg");
  EXPECT_EQ(hw.heads.retrieval, sample_map().retrieval);
  EXPECT_EQ(hw.heads.group_size, 2);
  EXPECT_TRUE(hw.missing_layers.empty());
  auto back = rtp::sparse::settings_from_headwise(hw);
  EXPECT_EQ(back.sink, 2);
  EXPECT_EQ(back.window, 100);
  EXPECT_EQ(back.dense_below, 7);
}

TEST(HeadwiseConfig, MixedKvGroupIsAnErrorNamingLayerAndHead) {
  json j = {{"sink_token_num", 4}, {"0", {0, 0, 0, 0}}, {"1", {0, 0, 1, 0}}, {"2", {0, 0, 0, 0}}};
  const std::string msg = error_of(
      [&] { rtp::sparse::read_headwise_config(j, config_3x4x2(), HeadwiseReadMode::kPerKvHead, "my/config.json"); });
  EXPECT_NE(msg.find("my/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer 1 KV head 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1,0]"), std::string::npos) << msg;
}

TEST(HeadwiseConfig, RtpLlmReadingKeepsAKvHeadIfAnyQueryHeadIsFull) {
  json j = {{"0", {0, 0, 0, 0}}, {"1", {0, 0, 1, 0}}, {"2", {1, 0, 0, 0}}};
  auto hw = rtp::sparse::read_headwise_config(j, config_3x4x2(), HeadwiseReadMode::kAnyQueryHead, "cfg");
  EXPECT_EQ(hw.heads.retrieval, (std::vector<std::vector<uint8_t>>{{0, 0}, {0, 1}, {1, 0}}));
  // RTP-LLM defaults
  EXPECT_EQ(hw.sink_token_num, 4);
  EXPECT_EQ(hw.swa_token_num, 8192);
  EXPECT_EQ(hw.seqlen_threshold, 16384);
}

TEST(HeadwiseConfig, MissingLayerIsAllRetrievalAndReported) {
  json j = {{"0", {0, 0, 0, 0}}, {"2", {0, 0, 0, 0}}};
  auto hw = rtp::sparse::read_headwise_config(j, config_3x4x2(), HeadwiseReadMode::kAnyQueryHead, "cfg");
  EXPECT_EQ(hw.missing_layers, std::vector<int64_t>{1});
  EXPECT_EQ(hw.heads.retrieval[1], (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(hw.heads.retrieval[0], (std::vector<uint8_t>{0, 0}));
}

TEST(HeadwiseConfig, BadShapesAndValuesAreErrors) {
  auto cfg = config_3x4x2();
  auto read = [&](const json& j) {
    return error_of([&] { rtp::sparse::read_headwise_config(j, cfg, HeadwiseReadMode::kAnyQueryHead, "c"); });
  };
  EXPECT_NE(read({{"0", {0, 0, 0}}}).find("4 = num_attention_heads"), std::string::npos);
  EXPECT_NE(read({{"0", {0, 0, 2, 0}}}).find("query head 2 must be 0 or 1"), std::string::npos);
  EXPECT_NE(read({{"3", {0, 0, 0, 0}}}).find("model has 3 layers"), std::string::npos);
  EXPECT_NE(read({{"foo", 1}}).find("\"foo\""), std::string::npos);
  EXPECT_NE(read({{"swa_token_num", "x"}}).find("swa_token_num"), std::string::npos);
  EXPECT_NE(read(json::array()).find("must be an object"), std::string::npos);
}

TEST(RtpurboJson, ManifestRoundTrip) {
  rtp::sparse::RtpurboManifest m;
  m.heads = sample_map();
  m.settings.top_p = 0.8;
  m.settings.window = 64;
  m.settings.sink = 2;
  m.settings.block_size = 128;
  m.settings.local_blocks = 2;
  m.settings.indexer_dim = 8;
  m.settings.dense_below = 33;
  m.settings.post_rope_indexer = true;
  m.settings.query_sub_blocks = 8;
  m.settings.sub_block_aggregate = "max";
  m.has_indexer = true;
  m.base_model = "/base";
  m.heads_source = "heads.h5";
  m.indexer_source = "ck.safetensors";
  const json j = rtp::sparse::manifest_to_json(m);
  EXPECT_EQ(j["format_version"], rtp::sparse::kConvertedFormatVersion);
  auto back = rtp::sparse::manifest_from_json(j, "rtpurbo.json");
  EXPECT_EQ(back.heads.retrieval, m.heads.retrieval);
  EXPECT_EQ(back.heads.group_size, 2);
  EXPECT_DOUBLE_EQ(back.settings.top_p, 0.8);
  EXPECT_EQ(back.settings.window, 64);
  EXPECT_EQ(back.settings.sink, 2);
  EXPECT_EQ(back.settings.block_size, 128);
  EXPECT_EQ(back.settings.local_blocks, 2);
  EXPECT_EQ(back.settings.indexer_dim, 8);
  EXPECT_EQ(back.settings.dense_below, 33);
  EXPECT_TRUE(back.settings.post_rope_indexer);
  EXPECT_EQ(back.settings.query_sub_blocks, 8);
  EXPECT_EQ(back.settings.sub_block_aggregate, "max");
  EXPECT_TRUE(back.has_indexer);
  EXPECT_EQ(back.indexer_file, "indexer.safetensors");
  EXPECT_EQ(back.base_model, "/base");
  EXPECT_EQ(back.heads_source, "heads.h5");
  EXPECT_EQ(back.indexer_source, "ck.safetensors");
}

TEST(RtpurboJson, NewerFormatVersionIsRefused) {
  rtp::sparse::RtpurboManifest m;
  m.heads = sample_map();
  json j = rtp::sparse::manifest_to_json(m);
  j["format_version"] = rtp::sparse::kConvertedFormatVersion + 1;
  const std::string msg = error_of([&] { rtp::sparse::manifest_from_json(j, "dir/rtpurbo.json"); });
  EXPECT_NE(msg.find("dir/rtpurbo.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("newer RTPurbo"), std::string::npos) << msg;
  EXPECT_NE(msg.find("upgrade"), std::string::npos) << msg;
  j["format_version"] = rtp::sparse::kConvertedFormatVersion;
  EXPECT_NO_THROW(rtp::sparse::manifest_from_json(j, "ok"));
  j.erase("format_version");
  EXPECT_NE(error_of([&] { rtp::sparse::manifest_from_json(j, "x"); }).find("format_version"), std::string::npos);
}

TEST(RtpurboJson, SettingsRejectUnknownKeysAndBadValues) {
  EXPECT_NE(error_of([] { rtp::sparse::settings_from_json({{"windw", 3}}, "s"); }).find("\"windw\""),
            std::string::npos);
  EXPECT_NE(error_of([] { rtp::sparse::settings_from_json({{"top_p", 1.5}}, "s"); }).find("top_p"),
            std::string::npos);
  EXPECT_NE(error_of([] { rtp::sparse::settings_from_json({{"window", 0}}, "s"); }).find("window"),
            std::string::npos);
  auto d = rtp::sparse::settings_from_json(json::object(), "s");
  EXPECT_EQ(d.window, rtp::sparse::SparseSettings{}.window);
  EXPECT_EQ(d.query_sub_blocks, 1);  // files written before sub-blocks: one pooled query per block
  for (int bad : {0, 3, 128}) {
    const std::string msg = error_of([&] { rtp::sparse::settings_from_json({{"query_sub_blocks", bad}}, "s"); });
    EXPECT_NE(msg.find("query_sub_blocks"), std::string::npos) << bad << ": " << msg;
    EXPECT_NE(msg.find("found " + std::to_string(bad)), std::string::npos) << msg;
  }
  EXPECT_EQ(rtp::sparse::settings_from_json({{"query_sub_blocks", 64}}, "s").query_sub_blocks, 64);
  // Only the block sizes the selection and prefill kernels tile: another would fail at the first sparse prefill.
  for (int bad : {16, 96, 256}) {
    const std::string msg = error_of([&] { rtp::sparse::settings_from_json({{"block_size", bad}}, "s"); });
    EXPECT_NE(msg.find("\"block_size\" must be 64 or 128"), std::string::npos) << bad << ": " << msg;
    EXPECT_NE(msg.find("found " + std::to_string(bad)), std::string::npos) << msg;
  }
  EXPECT_EQ(rtp::sparse::settings_from_json({{"block_size", 128}}, "s").block_size, 128);
  EXPECT_EQ(d.sub_block_aggregate, "mean");  // files written before the aggregate existed
  for (const json& bad : {json("median"), json(1), json("MAX")}) {
    const std::string msg = error_of([&] { rtp::sparse::settings_from_json({{"sub_block_aggregate", bad}}, "s"); });
    EXPECT_NE(msg.find("sub_block_aggregate"), std::string::npos) << bad.dump() << ": " << msg;
  }
  EXPECT_EQ(rtp::sparse::settings_from_json({{"sub_block_aggregate", "max"}}, "s").sub_block_aggregate, "max");
}

TEST(RtpurboJson, HeadMapJsonErrors) {
  json j = rtp::sparse::head_map_to_json(sample_map());
  j["retrieval"][1] = {0, 3};
  EXPECT_NE(error_of([&] { rtp::sparse::head_map_from_json(j, "h"); }).find("layer 1"), std::string::npos);
  j = rtp::sparse::head_map_to_json(sample_map());
  j["retrieval"].erase(2);
  EXPECT_NE(error_of([&] { rtp::sparse::head_map_from_json(j, "h"); }).find("3 layers"), std::string::npos);
}

TEST(RtpurboJson, HeadsMustFitModel) {
  auto cfg = config_3x4x2();
  EXPECT_NO_THROW(rtp::sparse::check_heads_fit_model(sample_map(), cfg, "heads"));
  cfg.num_hidden_layers = 4;
  EXPECT_NE(error_of([&] { rtp::sparse::check_heads_fit_model(sample_map(), cfg, "heads"); }).find("4 layers"),
            std::string::npos);
}

}  // namespace
