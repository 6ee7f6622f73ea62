// Indexer checkpoints, export -> load_converted round trips on the qwen3-tiny fixtures, plain HF directories
// with headwise_config, and the rtpurbo-export tool.
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "test_util.h"
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model_fixtures.h"
#include "rtp/heads/head_profile.h"
#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/model/qwen3.h"
#include "rtp/sparse/converted_model.h"
#include "rtp/sparse/headwise_config.h"
#include "rtp/sparse/indexer_checkpoint.h"
#include "rtp/torch/tensor_io.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using rtp::sparse::HeadMap;

// Per process (two checkouts, or two runs, testing at once must not share it), removed after a run where every
// test passed. Made known before the tests run, so that its cleanup is registered with them.
const std::string& scratch_root() { return rtp::testing::process_scratch_dir("rtp_export_test"); }
[[maybe_unused]] const std::string& kScratchAtStart = scratch_root();

std::string scratch(const std::string& name) {
  const std::string d = scratch_root() + "/" + name;
  rtp::remove_tree(d);
  fs::create_directories(fs::path(d).parent_path());
  return d;
}

using rtp::testing::error_of;

// qwen3-tiny: 3 layers, 4 query heads, 2 KV heads (group 2), head_dim 32.
HeadMap tiny_heads() {
  HeadMap m = HeadMap::all_streaming(3, 2, 2);
  m.retrieval[0][1] = 1;
  m.retrieval[2][0] = 1;
  return m;
}

rtp::sparse::Indexer random_indexer(const HeadMap& heads, int64_t dim, uint64_t seed) {
  rtp::sparse::Indexer ix(heads, 32, dim);
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& [name, t] : ix.named_parameters()) t.copy_(torch::randn(t.sizes()));
  return ix;
}

rtp::sparse::SparseSettings tiny_settings() {
  rtp::sparse::SparseSettings s;
  s.sink = 2;
  s.window = 16;
  s.block_size = 128;
  s.top_p = 0.85;
  s.indexer_dim = 8;
  s.dense_below = 5;
  s.query_sub_blocks = 4;
  s.sub_block_aggregate = "max";
  return s;
}

void expect_same_indexer(const rtp::sparse::Indexer& a, const rtp::sparse::Indexer& b) {
  auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_FALSE(pa.empty());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].first, pb[i].first);
    EXPECT_TRUE(torch::equal(pa[i].second.cpu(), pb[i].second.cpu())) << pa[i].first;
  }
}

void expect_same_settings(const rtp::sparse::SparseSettings& a, const rtp::sparse::SparseSettings& b) {
  EXPECT_EQ(a.sink, b.sink);
  EXPECT_EQ(a.window, b.window);
  EXPECT_EQ(a.block_size, b.block_size);
  EXPECT_EQ(a.local_blocks, b.local_blocks);
  EXPECT_DOUBLE_EQ(a.top_p, b.top_p);
  EXPECT_EQ(a.indexer_dim, b.indexer_dim);
  EXPECT_EQ(a.dense_below, b.dense_below);
  EXPECT_EQ(a.post_rope_indexer, b.post_rope_indexer);
  EXPECT_EQ(a.query_sub_blocks, b.query_sub_blocks);
  EXPECT_EQ(a.sub_block_aggregate, b.sub_block_aggregate);
}

torch::Tensor dense_logits(rtp::model::Qwen3Model& m, const torch::Tensor& ids) {
  torch::NoGradGuard g;
  return m.forward(ids);
}

TEST(IndexerCheckpoint, RoundTripKeepsTensorsHeadsSettingsAndMetadata) {
  const std::string path = scratch("ck") + ".safetensors";
  auto ix = random_indexer(tiny_heads(), 8, 1);
  rtp::sparse::save_indexer_checkpoint(path, ix, tiny_settings(), {{"step", "300"}});
  EXPECT_TRUE(rtp::sparse::is_indexer_checkpoint(path));
  auto ck = rtp::sparse::load_indexer_checkpoint(path);
  expect_same_indexer(ix, ck.indexer);
  EXPECT_EQ(ck.heads.retrieval, tiny_heads().retrieval);
  expect_same_settings(ck.settings, tiny_settings());
  EXPECT_EQ(ck.metadata.at("step"), "300");
  // HF-style names
  rtp::io::SafetensorsFile f(path);
  EXPECT_NE(f.find("model.layers.0.self_attn.indexer.q_proj.weight"), nullptr);
  EXPECT_NE(f.find("model.layers.2.self_attn.indexer.k_proj.weight"), nullptr);
  EXPECT_EQ(f.find("model.layers.1.self_attn.indexer.q_proj.weight"), nullptr);  // no retrieval head in layer 1
  EXPECT_NE(error_of([&] { rtp::sparse::save_indexer_checkpoint(path, ix, tiny_settings(), {{"head_map", "x"}}); })
                .find("reserved"),
            std::string::npos);
}

TEST(IndexerCheckpoint, NewerVersionAndForeignFilesAreRefused) {
  const std::string path = scratch("ck-new") + ".safetensors";
  auto ix = random_indexer(tiny_heads(), 8, 2);
  rtp::sparse::save_indexer_checkpoint(path, ix, tiny_settings());
  auto tensors = rtp::read_all_tensors(path);
  auto md = rtp::io::SafetensorsFile(path).metadata();
  md["format_version"] = "2";
  rtp::save_tensors(path, tensors, md);
  const std::string msg = error_of([&] { rtp::sparse::load_indexer_checkpoint(path); });
  EXPECT_NE(msg.find("newer RTPurbo"), std::string::npos) << msg;
  // a model checkpoint is not an indexer checkpoint
  const std::string model_file = rtp::testing::model_fixture_dir("qwen3-tiny-yarn-tied-bf16") + "/model.safetensors";
  EXPECT_FALSE(rtp::sparse::is_indexer_checkpoint(model_file));
  EXPECT_NE(error_of([&] { rtp::sparse::load_indexer_checkpoint(model_file); }).find("format"), std::string::npos);
  // a tensor of a layer without retrieval heads
  md["format_version"] = "1";
  tensors.emplace_back("model.layers.1.self_attn.indexer.k_proj.weight", torch::zeros({8, 32}));
  rtp::save_tensors(path, tensors, md);
  EXPECT_NE(error_of([&] { rtp::sparse::load_indexer_checkpoint(path); }).find("layers.1"), std::string::npos);
}

class ExportRoundTrip : public ::testing::TestWithParam<bool> {};  // param: copy_weights

TEST_P(ExportRoundTrip, LoadConvertedGivesSameModelHeadsSettingsAndIndexer) {
  torch::manual_seed(176);  // the random ids: the same in every run, whatever ran before
  const bool copy = GetParam();
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string out = scratch(copy ? "conv-copy" : "conv-link");
  auto ix = random_indexer(tiny_heads(), 8, 3);
  rtp::sparse::ExportOptions o;
  o.model_dir = base;
  o.out_dir = out;
  o.copy_weights = copy;
  rtp::sparse::RtpurboManifest prov;
  prov.heads_source = "heads.h5";
  rtp::sparse::export_converted(o, prov, tiny_heads(), tiny_settings(), ix);

  ASSERT_TRUE(rtp::sparse::is_converted_model_dir(out));
  EXPECT_FALSE(fs::exists(out + ".tmp." + std::to_string(::getpid())));
  // weights: symlinks that resolve to the base files, or regular copies
  for (const char* f : {"model-00001-of-00007.safetensors", "model-00007-of-00007.safetensors",
                        "model.safetensors.index.json"}) {
    const fs::path p = fs::path(out) / f;
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_EQ(fs::is_symlink(p), !copy) << p;
    if (!copy) EXPECT_EQ(fs::canonical(p), fs::canonical(fs::path(base) / f));
  }
  EXPECT_FALSE(fs::exists(fs::path(out) / "reference.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(fs::path(out) / "indexer.safetensors"));
  EXPECT_FALSE(fs::is_symlink(fs::path(out) / "config.json"));

  // config.json = base config + headwise_config
  const json cfg = rtp::read_json_file(out + "/config.json");
  const json base_cfg = rtp::read_json_file(base + "/config.json");
  EXPECT_EQ(cfg["headwise_config"], rtp::sparse::headwise_config_to_json(tiny_heads(), tiny_settings()));
  json stripped = cfg;
  stripped.erase("headwise_config");
  EXPECT_EQ(stripped, base_cfg);
  const json manifest = rtp::read_json_file(out + "/rtpurbo.json");
  EXPECT_EQ(manifest["format_version"], rtp::sparse::kConvertedFormatVersion);
  EXPECT_EQ(manifest["heads_source"], "heads.h5");
  EXPECT_EQ(manifest["weights"], copy ? "copy" : "symlink");
  EXPECT_EQ(manifest["base_model"], fs::canonical(base).string());

  auto cm = rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(cm.heads.retrieval, tiny_heads().retrieval);
  EXPECT_EQ(cm.heads.group_size, 2);
  expect_same_settings(cm.settings, tiny_settings());
  expect_same_indexer(ix, cm.indexer);
  auto ref = rtp::model::load_qwen3(base, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, 256, {2, 13}, torch::kInt64);
  EXPECT_TRUE(torch::equal(dense_logits(ref, ids), dense_logits(cm.model, ids)));
}

INSTANTIATE_TEST_SUITE_P(Weights, ExportRoundTrip, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Copy" : "Symlink"; });

TEST(Export, BaseWithoutIndexGetsOneNamingOnlyItsWeights) {
  torch::manual_seed(193);  // the random ids: the same in every run, whatever ran before
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny-yarn-tied-bf16");  // model.safetensors only
  const std::string out = scratch("conv-noindex");
  auto ref = rtp::model::load_qwen3(base, torch::kCPU, torch::kFloat32);
  const auto& c = ref.config();
  HeadMap heads = HeadMap::all_streaming(c.num_hidden_layers, c.num_key_value_heads, c.group_size());
  heads.retrieval[0][0] = 1;
  rtp::sparse::Indexer ix(heads, c.head_dim, 4);
  auto s = tiny_settings();
  s.indexer_dim = 4;
  rtp::sparse::export_converted({base, out, false}, heads, s, ix);
  EXPECT_TRUE(fs::is_symlink(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/reference.safetensors"));
  const json idx = rtp::read_json_file(out + "/model.safetensors.index.json");
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it)
    EXPECT_EQ(it.value(), "model.safetensors") << it.key();
  EXPECT_FALSE(idx["weight_map"].contains("model.layers.0.self_attn.indexer.q_proj.weight"));
  auto cm = rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, c.vocab_size, {1, 9}, torch::kInt64);
  EXPECT_TRUE(torch::equal(dense_logits(ref, ids), dense_logits(cm.model, ids)));
}

TEST(Export, ReplacesAnEarlierExportButNeverForeignDirectories) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string out = scratch("conv-replace");
  auto ix = random_indexer(tiny_heads(), 8, 4);
  rtp::sparse::export_converted({base, out, false}, tiny_heads(), tiny_settings(), ix);
  auto s2 = tiny_settings();
  s2.top_p = 0.5;
  rtp::sparse::export_converted({base, out, false}, tiny_heads(), s2, ix);
  EXPECT_DOUBLE_EQ(rtp::sparse::read_manifest(out + "/rtpurbo.json").settings.top_p, 0.5);

  const std::string foreign = scratch("foreign");
  fs::create_directories(foreign);
  std::ofstream(foreign + "/keep.txt") << "mine";
  const std::string msg =
      error_of([&] { rtp::sparse::export_converted({base, foreign, false}, tiny_heads(), tiny_settings(), ix); });
  EXPECT_NE(msg.find("refusing"), std::string::npos) << msg;
  EXPECT_TRUE(fs::exists(foreign + "/keep.txt"));
  EXPECT_FALSE(fs::exists(foreign + ".tmp." + std::to_string(::getpid())));
}

// An export never writes over the files its links resolve to: its base, however spelled ("dir/", "dir/.", a symlink),
// nor the directory a converted base's weights live in. A model converted from a converted one links to the weights
// themselves, not to a chain of links.
TEST(Export, NeverReplacesWhatItLinksTo) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  auto ix = random_indexer(tiny_heads(), 8, 9);
  const std::string first = scratch("conv-first");
  rtp::sparse::export_converted({base, first, true}, tiny_heads(), tiny_settings(), ix);  // real files
  const std::string link = scratch("conv-first-link");
  fs::create_directory_symlink(first, link);
  for (const std::string& spelling : {first + "/", first + "/.", first + "//", link}) {
    const std::string msg = error_of(
        [&] { rtp::sparse::export_converted({first, spelling, false}, tiny_heads(), tiny_settings(), ix); });
    EXPECT_NE(msg.find("is the base model directory itself"), std::string::npos) << spelling << ": " << msg;
  }
  const std::string second = scratch("conv-second");
  rtp::sparse::export_converted({first, second, false}, tiny_heads(), tiny_settings(), ix);
  const std::string shard = "model-00001-of-00007.safetensors";
  EXPECT_EQ(fs::read_symlink(second + "/" + shard), fs::canonical(first + "/" + shard));
  // `first` is an earlier export, which export would replace; but `second` links into it.
  const std::string msg =
      error_of([&] { rtp::sparse::export_converted({second, first, false}, tiny_heads(), tiny_settings(), ix); });
  EXPECT_NE(msg.find("would replace '" + fs::canonical(first).string() + "/"), std::string::npos) << msg;
  EXPECT_TRUE(fs::is_regular_file(first + "/" + shard) && !fs::is_symlink(first + "/" + shard));
  auto ref = rtp::model::load_qwen3(base, torch::kCPU, torch::kFloat32);
  auto cm = rtp::sparse::load_converted(second, torch::kCPU, torch::kFloat32);
  auto ids = torch::randint(0, 256, {1, 7}, torch::kInt64);
  EXPECT_TRUE(torch::equal(dense_logits(ref, ids), dense_logits(cm.model, ids)));
}

TEST(Export, MismatchedHeadsAndIndexerAreErrors) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string out = scratch("conv-bad");
  auto ix = random_indexer(tiny_heads(), 8, 5);
  HeadMap other = tiny_heads();
  other.retrieval[1][1] = 1;
  EXPECT_NE(error_of([&] { rtp::sparse::export_converted({base, out, false}, other, tiny_settings(), ix); })
                .find("layer 1 KV head 1"),
            std::string::npos);
  HeadMap wrong = HeadMap::all_streaming(4, 2, 2);
  EXPECT_NE(error_of([&] { rtp::sparse::export_converted({base, out, false}, wrong, tiny_settings(),
                                                         rtp::sparse::Indexer()); })
                .find("4 layers"),
            std::string::npos);
  auto s = tiny_settings();
  s.indexer_dim = 16;
  EXPECT_NE(error_of([&] { rtp::sparse::export_converted({base, out, false}, tiny_heads(), s, ix); })
                .find("indexer_dim"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out));
}

TEST(LoadConverted, RefusesNewerFormatAndDisagreeingConfig) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string out = scratch("conv-versions");
  auto ix = random_indexer(tiny_heads(), 8, 6);
  rtp::sparse::export_converted({base, out, false}, tiny_heads(), tiny_settings(), ix);
  json cfg = rtp::read_json_file(out + "/config.json");
  cfg["headwise_config"]["1"] = {1, 1, 0, 0};
  rtp::write_json_atomic(out + "/config.json", cfg);
  std::string msg = error_of([&] { rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32); });
  EXPECT_NE(msg.find("disagree"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layer 1 KV head 0"), std::string::npos) << msg;
  cfg.erase("headwise_config");
  rtp::write_json_atomic(out + "/config.json", cfg);
  json m = rtp::read_json_file(out + "/rtpurbo.json");
  m["format_version"] = rtp::sparse::kConvertedFormatVersion + 1;
  rtp::write_json_atomic(out + "/rtpurbo.json", m);
  msg = error_of([&] { rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32); });
  EXPECT_NE(msg.find("newer RTPurbo"), std::string::npos) << msg;
}

TEST(LoadConverted, PlainHfDirectoryWithHeadwiseConfigLoadsItsHeadMap) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string dir = scratch("hf-headwise");
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(base))
    if (e.path().extension() == ".safetensors" || e.path().filename() == "model.safetensors.index.json")
      fs::create_symlink(fs::canonical(e.path()), fs::path(dir) / e.path().filename());
  json cfg = rtp::read_json_file(base + "/config.json");
  // RTP-LLM style: per query head; layer 1 has a mixed group (query head 3 only), layer 2 absent.
  cfg["headwise_config"] = {{"sink_token_num", 4}, {"swa_token_num", 8192}, {"seqlen_threshold", 16384},
                            {"0", {1, 1, 0, 0}},   {"1", {0, 0, 0, 1}}};
  rtp::write_json_atomic(dir + "/config.json", cfg);
  EXPECT_FALSE(rtp::sparse::is_converted_model_dir(dir));
  auto cm = rtp::sparse::load_converted(dir, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(cm.heads.retrieval, (std::vector<std::vector<uint8_t>>{{1, 0}, {0, 1}, {1, 1}}));
  EXPECT_EQ(cm.settings.sink, 4);
  EXPECT_EQ(cm.settings.window, 8193);
  EXPECT_EQ(cm.settings.dense_below, 16384);
  EXPECT_EQ(cm.indexer.heads().num_layers, 0);  // no indexer: retrieval heads attend densely
  // and a directory with neither is an error
  EXPECT_NE(error_of([&] { rtp::sparse::load_converted(base, torch::kCPU, torch::kFloat32); }).find("headwise_config"),
            std::string::npos);
}

// The built rtpurbo-export (a build dependency of this test, tests/CMakeLists.txt): missing, it is a failure.
class ExportTool : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(tool)) << tool
                                  << " is missing: build the rtpurbo-export target (building export_test builds it)";
  }
  const std::string tool = std::string(RTP_BINARY_DIR) + "/bin/rtpurbo-export";
};

TEST_F(ExportTool, WritesADirectoryFromAnIndexerCheckpoint) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string ck = scratch("tool-ck") + ".safetensors";
  const std::string out = scratch("tool-out");
  auto ix = random_indexer(tiny_heads(), 8, 7);
  rtp::sparse::save_indexer_checkpoint(ck, ix, tiny_settings());
  const std::string cmd = tool + " --model " + base + " --heads " + ck + " --indexer " + ck + " --out " + out +
                          " --copy-weights --top-p 0.7 --window 32 --sink 1 --block-size 64 --dense-below 9 > " +
                          out + ".log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << rtp::read_text_file(out + ".log");
  auto cm = rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(cm.heads.retrieval, tiny_heads().retrieval);
  EXPECT_DOUBLE_EQ(cm.settings.top_p, 0.7);
  EXPECT_EQ(cm.settings.window, 32);
  EXPECT_EQ(cm.settings.sink, 1);
  EXPECT_EQ(cm.settings.block_size, 64);
  EXPECT_EQ(cm.settings.dense_below, 9);
  EXPECT_EQ(cm.settings.indexer_dim, 8);
  expect_same_indexer(ix, cm.indexer);
  EXPECT_FALSE(fs::is_symlink(out + "/model-00001-of-00007.safetensors"));
  EXPECT_EQ(rtp::read_json_file(out + "/rtpurbo.json")["indexer_source"], ck);
  // a bad flag value is a clear error and writes nothing
  const std::string bad = scratch("tool-bad");
  const std::string cmd2 = tool + " --model " + base + " --heads " + ck + " --indexer " + ck + " --out " + bad +
                           " --top-p 1.5 > " + bad + ".log 2>&1";
  EXPECT_NE(std::system(cmd2.c_str()), 0);
  EXPECT_FALSE(fs::exists(bad));
  EXPECT_NE(rtp::read_text_file(bad + ".log").find("--top-p"), std::string::npos);
}

// Without --indexer the settings come from the --heads file when it carries them (not the library defaults), the
// console says which were used, and the two ways the result is dense in effect are warned about.
TEST_F(ExportTool, WithoutIndexerSaysWhatItWroteAndWarns) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string ck = scratch("noix-ck") + ".safetensors";
  rtp::sparse::save_indexer_checkpoint(ck, random_indexer(tiny_heads(), 8, 9), tiny_settings());
  const std::string out = scratch("noix-out");
  const std::string cmd = tool + " --model " + base + " --heads " + ck + " --out " + out + " > " + out + ".log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << rtp::read_text_file(out + ".log");
  const std::string log = rtp::read_text_file(out + ".log");
  EXPECT_NE(log.find("settings (from --heads " + ck + ", then flags): sink 2, window 16, top_p 0.85, block size 128, "
                     "local blocks 1, query sub-blocks 4, aggregate max, dense_below 5"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("warning: 2 retrieval KV heads but no --indexer"), std::string::npos) << log;
  EXPECT_NE(log.find("layer N has retrieval heads but no indexer"), std::string::npos) << log;
  EXPECT_EQ(log.find("max_position_embeddings"), std::string::npos) << log;  // 2 + 16 < 512
  EXPECT_EQ(log.find("note: dense_below"), std::string::npos) << log;         // 512 positions, and dense_below 5
  const auto cm = rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(cm.settings.window, 16);
  EXPECT_DOUBLE_EQ(cm.settings.top_p, 0.85);

  const std::string out2 = scratch("noix-out2");
  ASSERT_EQ(std::system((tool + " --model " + base + " --heads " + ck + " --out " + out2 + " --window 510 > " + out2 +
                         ".log 2>&1").c_str()), 0);
  EXPECT_NE(rtp::read_text_file(out2 + ".log").find("sink + window = 512 >= the model's max_position_embeddings 512"),
            std::string::npos)
      << rtp::read_text_file(out2 + ".log");
}

// A long-context model exported with dense_below 0 (every prompt sparse) gets a note naming --dense-below 16384; with
// the flag, or on a short-context model (the toy's), there is none.
TEST_F(ExportTool, LongContextModelWithoutDenseBelowGetsANote) {
  const std::string base = scratch("long-base");
  fs::create_directories(base);
  fs::copy(rtp::testing::model_fixture_dir("qwen3-tiny"), base, fs::copy_options::recursive);
  json cfg = rtp::read_json_file(base + "/config.json");
  cfg["max_position_embeddings"] = 40960;
  rtp::write_json_atomic(base + "/config.json", cfg);
  const std::string ck = scratch("long-ck") + ".safetensors";
  auto settings = tiny_settings();
  settings.dense_below = 0;
  rtp::sparse::save_indexer_checkpoint(ck, random_indexer(tiny_heads(), 8, 9), settings);
  const auto run = [&](const std::string& name, const std::string& flags) {
    const std::string out = scratch(name);
    const std::string cmd = tool + " --model " + base + " --heads " + ck + " --indexer " + ck + " --out " + out + flags +
                            " > " + out + ".log 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << rtp::read_text_file(out + ".log");
    return rtp::read_text_file(out + ".log");
  };
  const std::string plain = run("long-out", "");
  EXPECT_NE(plain.find("note: dense_below 0: prompts of every length run sparse"), std::string::npos) << plain;
  EXPECT_NE(plain.find("--dense-below 16384 keeps shorter prompts dense"), std::string::npos) << plain;
  const std::string flagged = run("long-out2", " --dense-below 16384");
  EXPECT_EQ(flagged.find("note: dense_below"), std::string::npos) << flagged;
  EXPECT_NE(flagged.find("dense_below 16384"), std::string::npos) << flagged;
}

// Malformed numbers, stray arguments and a config.json given for --model are named as such (exit 2 for the
// command line), and nothing is written.
TEST_F(ExportTool, StrictCommandLine) {
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string ck = scratch("strict-ck") + ".safetensors";
  rtp::sparse::save_indexer_checkpoint(ck, random_indexer(tiny_heads(), 8, 9), tiny_settings());
  const std::string out = scratch("strict-out");
  const auto run = [&](const std::string& extra) {
    const int st = std::system((tool + " --heads " + ck + " --out " + out + " " + extra + " > " + out + ".log 2>&1").c_str());
    return std::make_pair(WEXITSTATUS(st), rtp::read_text_file(out + ".log"));
  };
  auto [rc, log] = run("--model " + base + " --top-p 0.9x");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(log.find("--top-p '0.9x' is not valid: expected a number in (0, 1]"), std::string::npos) << log;
  std::tie(rc, log) = run("--model " + base + " --window 32 extra");
  EXPECT_EQ(rc, 2);
  EXPECT_NE(log.find("unexpected argument 'extra'"), std::string::npos) << log;
  std::tie(rc, log) = run("--model " + base + "/config.json");
  EXPECT_EQ(rc, 1);
  EXPECT_NE(log.find("--model '" + base + "/config.json' is a file, expected a directory"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(ExportTool, TakesTheHeadMapFromAnHdf5HeadProfile) {
  rtp::heads::HeadProfile p;
  p.num_layers = 3;
  p.num_q_heads = 4;
  p.num_kv_heads = 2;
  p.retrieval.assign(12, 0.5f);
  p.long_range.assign(12, 0.1f);
  p.kv_retrieval.assign(6, 0.5f);
  p.kv_long_range.assign(6, 0.1f);
  p.selected_kv = {0, 1, 0, 0, 1, 0};  // tiny_heads()
  p.selected_q = {0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0};
  const std::string h5 = scratch("profile") + ".h5";
  rtp::heads::save_head_profile(p, h5);
  const std::string base = rtp::testing::model_fixture_dir("qwen3-tiny");
  const std::string ck = scratch("h5-ck") + ".safetensors";
  const std::string out = scratch("h5-out");
  auto ix = random_indexer(tiny_heads(), 8, 8);
  rtp::sparse::save_indexer_checkpoint(ck, ix, tiny_settings());
  const std::string cmd =
      tool + " --model " + base + " --heads " + h5 + " --indexer " + ck + " --out " + out + " > " + out + ".log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << rtp::read_text_file(out + ".log");
  auto cm = rtp::sparse::load_converted(out, torch::kCPU, torch::kFloat32);
  EXPECT_EQ(cm.heads.retrieval, tiny_heads().retrieval);
  EXPECT_EQ(rtp::read_json_file(out + "/rtpurbo.json")["heads_source"], h5);
  // a profile that selects other heads than the indexer was trained for is refused
  p.selected_kv = {1, 1, 0, 0, 1, 0};
  p.selected_q = {1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0};
  rtp::heads::save_head_profile(p, h5);
  const std::string out2 = scratch("h5-out2");
  const std::string cmd2 =
      tool + " --model " + base + " --heads " + h5 + " --indexer " + ck + " --out " + out2 + " > " + out2 + ".log 2>&1";
  EXPECT_NE(std::system(cmd2.c_str()), 0);
  EXPECT_NE(rtp::read_text_file(out2 + ".log").find("different head map"), std::string::npos);
}

}  // namespace
