#include "rtp/train/recipe.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <fstream>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/train/cuda_math_scope.h"
#include "test_util.h"

using namespace rtp::train;
namespace fs = std::filesystem;

namespace {

// Per process: two checkouts (or two runs) testing at once must not share it. Made known before the tests run,
// so that its cleanup is registered with them.
const std::string& scratch_dir() { return rtp::testing::process_scratch_dir("rtp_recipe_test"); }
[[maybe_unused]] const std::string& kScratchAtStart = scratch_dir();

std::string temp_recipe(const std::string& name, const std::string& text) {
  const std::string& dir = scratch_dir();
  fs::create_directories(dir);
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// The error message of load_train_config, or "" if it loaded.
std::string load_error(const std::string& path, const std::vector<std::pair<std::string, std::string>>& ov = {}) {
  try {
    load_train_config(path, ov);
  } catch (const rtp::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& piece) { return s.find(piece) != std::string::npos; }

}  // namespace

TEST(Recipe, DefaultsAreValidAndRegistryIsComplete) {
  TrainConfig c;
  EXPECT_NO_THROW(validate(c, "defaults"));
  const auto& reg = train_config_registry();
  EXPECT_GE(reg.fields().size(), 50u);
  for (const char* k : {"stage", "seq_len", "batch_size", "steps", "lr", "warmup_steps", "min_lr_ratio",
                        "weight_decay", "grad_clip", "seed", "device", "dtype", "out_dir", "log_every", "save_every",
                        "eval_every", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "model_dir", "data",
                        "indexer_dim", "top_p", "sink", "window", "block_size", "retrieval_fraction", "kv_budget",
                        "heads_file", "kl_query_samples", "kl_chunk", "query_sub_blocks", "sub_block_aggregate"})
    EXPECT_NE(reg.find(k), nullptr) << k;
  EXPECT_EQ(c.indexer_dim, 16);
  EXPECT_DOUBLE_EQ(c.top_p, 0.9);
  EXPECT_EQ(c.sink, 4);
  EXPECT_EQ(c.block_size, 64);
  EXPECT_EQ(c.query_sub_blocks, 1);
  EXPECT_EQ(c.sub_block_aggregate, "mean");
  EXPECT_EQ(reg.find("seq-len"), reg.find("seq_len"));  // kebab-case
}

TEST(Recipe, LoadsValues) {
  const auto p = temp_recipe("ok.yaml", "stage: pretrain\nseq_len: 512\nlr: 2e-3\nresume: true\nout_dir: 'a b'\n");
  const TrainConfig c = load_train_config(p);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_DOUBLE_EQ(c.lr, 2e-3);
  EXPECT_TRUE(c.resume);
  EXPECT_EQ(c.out_dir, "a b");
}

TEST(Recipe, UnknownKeyNamesKeyAndFile) {
  const auto p = temp_recipe("unknown.yaml", "seq_len: 512\nseqlen: 1024\n");
  const std::string e = load_error(p);
  EXPECT_TRUE(contains(e, "'seqlen'")) << e;
  EXPECT_TRUE(contains(e, p)) << e;
  EXPECT_TRUE(contains(e, "line 2")) << e;
  EXPECT_TRUE(contains(e, "did you mean 'seq_len'")) << e;
}

TEST(Recipe, BadEnumNamesChoices) {
  const auto p = temp_recipe("enum.yaml", "stage: finetune\n");
  const std::string e = load_error(p);
  EXPECT_TRUE(contains(e, "'stage'") && contains(e, "'finetune'") && contains(e, "one of pretrain, indexer") &&
              contains(e, p))
      << e;
}

TEST(Recipe, OutOfRange) {
  const auto p = temp_recipe("range.yaml", "top_p: 1.5\n");
  const std::string e = load_error(p);
  EXPECT_TRUE(contains(e, "'top_p'") && contains(e, "'1.5'") && contains(e, "a number in (0, 1]") && contains(e, p))
      << e;
  const auto q = temp_recipe("range2.yaml", "batch_size: 0\n");
  const std::string e2 = load_error(q);
  EXPECT_TRUE(contains(e2, "'batch_size'") && contains(e2, "an integer in [1, 1048576]")) << e2;
}

TEST(Recipe, WrongType) {
  for (const char* text : {"seq_len: 1.5\n", "seq_len: many\n", "lr: fast\n", "resume: maybe\n", "seq_len:\n",
                           "seq_len: [1, 2]\n"}) {
    const auto p = temp_recipe("type.yaml", text);
    const std::string e = load_error(p);
    EXPECT_FALSE(e.empty()) << text;
    EXPECT_TRUE(contains(e, p)) << e;
    const std::string key = std::string(text).substr(0, std::string(text).find(':'));
    EXPECT_TRUE(contains(e, "'" + key + "'")) << e;
  }
  EXPECT_TRUE(contains(load_error(temp_recipe("t.yaml", "seq_len: many\n")), "expected an integer")) << "";
}

TEST(Recipe, NotYamlOrNotAMapping) {
  EXPECT_TRUE(contains(load_error(temp_recipe("bad.yaml", "a: [1,\n")), "not valid YAML"));
  EXPECT_TRUE(contains(load_error(temp_recipe("seq.yaml", "- 1\n- 2\n")), "mapping"));
  EXPECT_TRUE(contains(load_error(temp_recipe("dup.yaml", "lr: 1e-3\nlr: 2e-3\n")), "twice"));
  EXPECT_TRUE(contains(load_error("/nonexistent/recipe.yaml"), "does not exist"));
}

TEST(Recipe, CrossFieldValidationNamesKeys) {
  const auto p = temp_recipe("cross.yaml", "num_attention_heads: 6\nnum_key_value_heads: 4\n");
  const std::string e = load_error(p);
  EXPECT_TRUE(contains(e, "num_attention_heads") && contains(e, "num_key_value_heads") && contains(e, p)) << e;
  const std::string e2 = load_error(temp_recipe("short.yaml", "seq_len: 64\n"));
  EXPECT_TRUE(contains(e2, "seq_len") && contains(e2, "toy_needles")) << e2;
  const std::string e3 = load_error(temp_recipe("random.yaml", "model_init: random\n"));
  EXPECT_TRUE(contains(e3, "model_init") && contains(e3, "model_dir")) << e3;
  const std::string e4 = load_error(temp_recipe("sub.yaml", "block_size: 64\nquery_sub_blocks: 6\n"));
  EXPECT_TRUE(contains(e4, "query_sub_blocks (6)") && contains(e4, "block_size (64)")) << e4;
  EXPECT_EQ(load_error(temp_recipe("sub4.yaml", "query_sub_blocks: 4\n")), "");
  EXPECT_EQ(load_error(temp_recipe("aggmax.yaml", "sub_block_aggregate: max\n")), "");
  // Only the block sizes the kernels tile: another would fail at the converted model's first sparse prefill.
  const std::string e6 = load_error(temp_recipe("block96.yaml", "block_size: 96\n"));
  EXPECT_TRUE(contains(e6, "block_size") && contains(e6, "'96'") && contains(e6, "one of 64, 128")) << e6;
  EXPECT_EQ(load_error(temp_recipe("block128.yaml", "block_size: 128\n")), "");
  const std::string e5 = load_error(temp_recipe("aggbad.yaml", "sub_block_aggregate: median\n"));
  EXPECT_TRUE(contains(e5, "sub_block_aggregate") && contains(e5, "median")) << e5;
}

// The selection kernels read 16-dim index vectors: another width is refused when the config loads, not after
// training (where select_blocks used to fail without saving the indexer).
TEST(Recipe, IndexerDimMustBeTheKernelsWidth) {
  const std::string e = load_error(temp_recipe("dim8.yaml", "stage: indexer\nmodel_dir: m\nindexer_dim: 8\n"));
  EXPECT_TRUE(contains(e, "indexer_dim must be 16") && contains(e, "found 8") && contains(e, "dim8.yaml")) << e;
  EXPECT_TRUE(contains(load_error("", {{"indexer_dim", "32"}}), "indexer_dim must be 16"));
  EXPECT_EQ(load_error("", {{"indexer_dim", "16"}}), "");
}

// --dump-config validates like the run: a device the run would refuse is refused here too, by its spelling
// (no CUDA device needed to dump a GPU recipe).
TEST(Recipe, DeviceIsCheckedWhenTheConfigLoads) {
  for (const char* bad : {"tpu", "cuda:", "cuda:x", "gpu", "CPU"}) {
    const std::string e = load_error("", {{"device", bad}});
    EXPECT_TRUE(contains(e, std::string("device '") + bad + "'") && contains(e, "cpu, cuda, cuda:N or auto")) << e;
  }
  for (const char* ok : {"cpu", "cuda", "cuda:3", "auto"}) EXPECT_EQ(load_error("", {{"device", ok}}), "") << ok;
}

TEST(Recipe, CliOverridesRecipeInOrder) {
  const auto p = temp_recipe("cli.yaml", "seq_len: 512\nlr: 2e-3\nbatch_size: 4\n");
  const TrainConfig c = load_train_config(p, {{"seq-len", "768"}, {"lr", "5e-4"}, {"lr", "7e-4"}});
  EXPECT_EQ(c.seq_len, 768);      // CLI beats recipe, kebab-case accepted
  EXPECT_DOUBLE_EQ(c.lr, 7e-4);   // the last override wins
  EXPECT_EQ(c.batch_size, 4);     // recipe beats default
  EXPECT_EQ(c.steps, TrainConfig{}.steps);
  const std::string e = load_error(p, {{"sq_len", "5"}});
  EXPECT_TRUE(contains(e, "command line") && contains(e, "'sq_len'")) << e;
  const std::string e2 = load_error(p, {{"lr", "-1"}});
  EXPECT_TRUE(contains(e2, "command line") && contains(e2, "'lr'") && contains(e2, "'-1'")) << e2;
}

TEST(Recipe, DumpConfigRoundTrips) {
  const auto p = temp_recipe("rt.yaml", "seq_len: 640\nlr: 0.0003\nout_dir: \"odd: name # x\"\nheads_file: ''\n"
                                        "rope_theta: 1000000\nmin_lr_ratio: 0.123456789012345\nresume: yes\n");
  const TrainConfig a = load_train_config(p, {{"weight_decay", "0.01"}, {"device", "cpu"}});
  const std::string dumped = dump_config(a);
  const TrainConfig b = load_train_config(temp_recipe("dumped.yaml", dumped));
  EXPECT_TRUE(a == b) << dumped;
  EXPECT_EQ(dump_config(b), dumped);
  EXPECT_EQ(b.out_dir, "odd: name # x");
  EXPECT_DOUBLE_EQ(b.min_lr_ratio, 0.123456789012345);
  // Without comments too.
  EXPECT_TRUE(load_train_config(temp_recipe("d2.yaml", dump_config(a, false))) == a);
  TrainConfig d;
  d.seq_len = 1000;
  EXPECT_FALSE(d == a);
}

// A key the configured run does not read is listed (rtpurbo-train warns), keyed on stage, data and model_dir as the
// stages' code reads them; at its default it is not listed.
TEST(Recipe, UnreadSettingsAreTheKeysTheRunDoesNotRead) {
  using V = std::vector<std::string>;
  TrainConfig pre;  // the default: pretrain a fresh toy model on toy data
  EXPECT_EQ(unread_settings(pre), V{});
  pre.top_p = 0.5;
  pre.window = 64;
  pre.kv_budget = 0.2;
  pre.hidden_size = 128;   // read: a fresh toy model
  pre.toy_needles = 8;     // read: toy data
  pre.autocast = "bfloat16";
  EXPECT_EQ(unread_settings(pre), (V{"top_p", "window", "kv_budget"}));
  pre.model_dir = "m";     // continues a checkpoint: the toy architecture and init_std are not read
  pre.init_std = 0.05;
  EXPECT_EQ(unread_settings(pre), (V{"hidden_size", "init_std", "top_p", "window", "kv_budget"}));

  TrainConfig idx;
  idx.stage = "indexer";
  idx.model_dir = "m";
  idx.heads_file = "h.h5";
  idx.retrieval_fraction = 0.3;  // the profile decides
  idx.autocast = "bfloat16";
  idx.eval_every = 5;
  idx.curriculum_start_len = 512;
  idx.toy_needles = 8;           // read: data toy
  idx.vocab_size = 300;          // read: the toy task's ids
  idx.num_hidden_layers = 2;     // the model's own config decides
  idx.top_p = 0.8;
  EXPECT_EQ(unread_settings(idx),
            (V{"autocast", "eval_every", "num_hidden_layers", "curriculum_start_len", "retrieval_fraction"}));
  idx.heads_file = "";
  idx.heads_random = true;       // now retrieval_fraction sizes the draw
  EXPECT_EQ(unread_settings(idx), (V{"autocast", "eval_every", "num_hidden_layers", "curriculum_start_len"}));
  idx.data = "files";
  idx.data_files = "a.txt";
  idx.data_separator = "";
  EXPECT_EQ(unread_settings(idx), (V{"autocast", "eval_every", "vocab_size", "num_hidden_layers",
                                     "curriculum_start_len", "toy_needles"}));
  idx.model_init = "random";
  idx.init_std = 0.01;           // read: random weights are drawn with it
  EXPECT_EQ(unread_settings(idx).size(), 6u);
}

// A random-heads baseline without a profile is sized by retrieval_fraction; a kv_budget there would have been
// ignored in silence, changing the baseline's head count.
TEST(Recipe, KvBudgetCannotSizeARandomHeadsBaseline) {
  const std::string e = load_error(temp_recipe("rand_budget.yaml", "stage: indexer\nmodel_dir: m\nheads_random: true\n"
                                                                   "kv_budget: 0.3\n"));
  EXPECT_TRUE(contains(e, "kv_budget (0.3) is read by rtpurbo-identify-heads only") &&
              contains(e, "retrieval_fraction (0.15)") && contains(e, "rand_budget.yaml")) << e;
  EXPECT_EQ(load_error("", {{"stage", "indexer"}, {"model_dir", "m"}, {"heads_random", "true"}}), "");
  EXPECT_EQ(load_error("", {{"stage", "indexer"}, {"model_dir", "m"}, {"heads_file", "h.h5"}, {"heads_random", "true"},
                            {"kv_budget", "0.3"}}), "");
}

TEST(Recipe, EveryRecipeInTheRepositoryLoadsAndValidates) {
  const fs::path dir = fs::path(RTP_SOURCE_DIR) / "recipes";
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto ext = e.path().extension().string();
    if (!e.is_regular_file() || (ext != ".yaml" && ext != ".yml")) continue;
    SCOPED_TRACE(e.path().string());
    EXPECT_NO_THROW({
      const TrainConfig c = load_train_config(e.path().string());
      // The dump of every recipe reloads to the same config.
      EXPECT_TRUE(load_train_config(temp_recipe("again.yaml", dump_config(c))) == c);
      // and sets nothing its run would not read (each would print rtpurbo-train's warning)
      EXPECT_EQ(unread_settings(c), std::vector<std::string>{});
    });
    ++n;
  }
  EXPECT_GE(n, 2);
}

// The recipe's `sdpa_backend` and the stages' TF32 choice live in libtorch's process-wide context: a stage's scope
// sets them and puts back what it found (flags only: no device is touched, so this runs without a GPU).
TEST(CudaMathScope, SetsRecipeChoicesAndRestoresThem) {
  auto& g = at::globalContext();
  g.setAllowTF32CuBLAS(false);
  g.setSDPUseFlash(true), g.setSDPUseMemEfficient(false), g.setSDPUseMath(true), g.setSDPUseCuDNN(true);
  {
    const rtp::train::CudaMathScope scope(c10::Device(c10::kCUDA, 0), true, "efficient");
    EXPECT_TRUE(g.allowTF32CuBLAS());
    EXPECT_FALSE(g.userEnabledFlashSDP());
    EXPECT_TRUE(g.userEnabledMemEfficientSDP());
    EXPECT_FALSE(g.userEnabledMathSDP());
    EXPECT_FALSE(g.userEnabledCuDNNSDP());
  }
  EXPECT_FALSE(g.allowTF32CuBLAS());
  EXPECT_TRUE(g.userEnabledFlashSDP());
  EXPECT_FALSE(g.userEnabledMemEfficientSDP());
  EXPECT_TRUE(g.userEnabledMathSDP());
  EXPECT_TRUE(g.userEnabledCuDNNSDP());
  {
    const rtp::train::CudaMathScope cpu_scope(c10::Device(c10::kCPU), true, "math");  // CPU: nothing changes
    EXPECT_FALSE(g.allowTF32CuBLAS());
    EXPECT_TRUE(g.userEnabledFlashSDP());
  }
  g.setSDPUseMemEfficient(true);
}
