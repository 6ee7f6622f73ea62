// Data-parallel indexer training over c10d Gloo on CPU, through the real rtpurbo-train binary:
// 2 ranks end with the parameters of 1 rank over the same global batch; resume reproduces the uninterrupted
// run; bad environments and a missing rank end with a message naming the problem.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "rtp/core/file_io.h"
#include "rtp/dist/distributed.h"
#include "rtp/torch/tensor_io.h"
#include "rtp/train/checkpoint.h"

namespace {

const std::string kBin = std::string(RTP_BINARY_DIR) + "/bin/";
const std::string kDir = std::string(RTP_BINARY_DIR) + "/tmp-dist-test";
const std::string kModel = std::string(RTP_SOURCE_DIR) + "/data/fixtures/models/qwen3-tiny";

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int sh(const std::string& cmd) { return std::system(("cd " + kDir + " && " + cmd).c_str()); }

int free_port() {
  std::random_device rd;
  return 20000 + static_cast<int>(rd() % 20000);
}

constexpr const char* kNoGloo = "built without gloo headers (libgloo-dev): no 2-rank runs on CPU";

struct RankExits {
  int rank0 = -1, rank1 = -1;  // -1: no exit status was recorded
};

// rtpurbo-train `args` as a 2-rank job on this machine: rank 1 in the background, rank 0 in the foreground, then
// waits for rank 1. Both exit statuses come back (a rank that fails while the other succeeds must fail the test);
// the logs are <name>-r0.log and <name>-r1.log. A rank whose peer died gives up after --dist_timeout_s.
RankExits two_ranks(const std::string& args, const std::string& name) {
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) + " ";
  const std::string train = kBin + "rtpurbo-train " + args + " --dist_timeout_s 120";
  const std::string exits = name + ".exits";
  sh("rm -f " + exits + "; { " + env + "RANK=1 LOCAL_RANK=1 " + train + " > " + name + "-r1.log 2>&1 & r1=$!; " + env +
     "RANK=0 LOCAL_RANK=0 " + train + " > " + name + "-r0.log 2>&1; r0=$?; wait $r1; echo $r0 $? > " + exits + "; }");
  RankExits e;
  std::ifstream(kDir + "/" + exits) >> e.rank0 >> e.rank1;
  return e;
}

// Both ranks of a two_ranks run exited with 0; otherwise a fatal failure showing both logs.
void expect_both_ranks_succeeded(const RankExits& e, const std::string& name) {
  ASSERT_TRUE(e.rank0 == 0 && e.rank1 == 0)
      << "rank 0 exit " << e.rank0 << ", rank 1 exit " << e.rank1 << "\n--- " << name << "-r0.log\n"
      << read(kDir + "/" + name + "-r0.log") << "\n--- " << name << "-r1.log\n" << read(kDir + "/" + name + "-r1.log");
}

class DistributedIndexer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rtp::train::remove_directory_tree(kDir);  // runs of an earlier invocation would be resumed or compared
    rtp::make_directories(kDir);
    std::ofstream(kDir + "/recipe.yaml") << "stage: indexer\ndevice: cpu\nseed: 5\nmodel_dir: " << kModel
                                         << "\nheads_file: " << kDir << "/heads.h5\n"
                                         << "vocab_size: 256\ntoy_num_filler: 100\ntoy_num_keys: 50\ntoy_num_values: 50\n"
                                            "toy_key_len: 1\ntoy_value_len: 1\ntoy_needles: 4\ntoy_queries: 2\n"
                                            "toy_spans: 1\ntoy_span_len: 8\nseq_len: 192\nbatch_size: 4\nsteps: 4\n"
                                            "lr: 3e-3\nwarmup_steps: 1\nkl_query_samples: 32\nkl_chunk: 64\n"
                                            "block_size: 64\nwindow: 32\nsink: 4\neval_samples: 2\nlog_every: 1\n"
                                            "save_every: 2\nweight_decay: 0\n";
    ASSERT_EQ(sh(kBin + "rtpurbo-identify-heads --model " + kModel + " --out heads.h5 --calibration toy --seq-len 128 "
                 "--num-sequences 2 --window 32 --retrieval-fraction 0.34 > heads.log 2>&1"), 0)
        << read(kDir + "/heads.log");
  }
  static std::map<std::string, torch::Tensor> indexer_of(const std::string& out_dir) {
    std::map<std::string, torch::Tensor> m;
    for (auto& [n, t] : rtp::read_all_tensors(kDir + "/" + out_dir + "/indexer.safetensors")) m[n] = t;
    return m;
  }
  static double max_diff(const std::string& a, const std::string& b) {
    auto x = indexer_of(a), y = indexer_of(b);
    EXPECT_EQ(x.size(), y.size());
    double d = 0;
    for (auto& [n, t] : x) d = std::max(d, (t - y.at(n)).abs().max().item<double>());
    return d;
  }
};

TEST_F(DistributedIndexer, TwoRanksMatchOneRankOverTheSameGlobalBatch) {
  if (!rtp::dist::distributed_available()) GTEST_SKIP() << kNoGloo;
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir one > one.log 2>&1"), 0) << read(kDir + "/one.log");
  ASSERT_NO_FATAL_FAILURE(expect_both_ranks_succeeded(two_ranks("--recipe recipe.yaml --out_dir two", "two"), "two"));
  const double d = max_diff("one", "two");
  std::cout << "max |indexer(1 rank) - indexer(2 ranks)| = " << d << "\n";
  EXPECT_LE(d, 1e-5);
  EXPECT_NE(read(kDir + "/two-r0.log").find("2 rank(s) (torchrun)"), std::string::npos);
}

TEST_F(DistributedIndexer, ResumeReproducesTheUninterruptedRun) {
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir full > full.log 2>&1"), 0) << read(kDir + "/full.log");
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir part --stop_at_step 2 > part1.log 2>&1"), 0);
  EXPECT_FALSE(rtp::file_exists(kDir + "/part/indexer.safetensors")) << "stopped early: no final indexer yet";
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir part --resume > part2.log 2>&1"), 0)
      << read(kDir + "/part2.log");
  EXPECT_NE(read(kDir + "/part2.log").find("resumed from"), std::string::npos);
  EXPECT_EQ(max_diff("full", "part"), 0.0);
}

// log.jsonl holds one line per logged step; a rerun without --resume is refused while out_dir holds an unfinished
// run, and allowed (replacing it) once the run finished; --resume refuses a config that would not continue the run.
TEST_F(DistributedIndexer, LogRerunAndResumeRules) {
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rules --stop_at_step 2 > rules1.log 2>&1"), 0)
      << read(kDir + "/rules1.log");
  EXPECT_NE(read(kDir + "/rules1.log").find("indexer: checkpoint "), std::string::npos) << read(kDir + "/rules1.log");
  std::string log = read(kDir + "/rules/log.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 2) << log;  // log_every 1, steps 1 and 2
  EXPECT_NE(log.find("{\"step\":2,\"kl\":"), std::string::npos) << log;
  EXPECT_NE(log.find("\"recall\":"), std::string::npos) << log;

  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rules > rules2.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/rules2.log").find("pass --resume to continue it"), std::string::npos)
      << read(kDir + "/rules2.log");

  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rules --resume --lr 1e-2 --sink 2 > rules3.log 2>&1"),
            0);
  const std::string e3 = read(kDir + "/rules3.log");
  EXPECT_NE(e3.find("lr (checkpoint 0.003, now 0.01)"), std::string::npos) << e3;
  EXPECT_NE(e3.find("sink (checkpoint 4, now 2)"), std::string::npos) << e3;

  // Tolerated: logging and saving cadence.
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rules --resume --log_every 2 --save_every 0 "
               "> rules4.log 2>&1"), 0)
      << read(kDir + "/rules4.log");
  log = read(kDir + "/rules/log.jsonl");
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 3) << log;  // + step 4 (log_every 2)
  EXPECT_TRUE(rtp::file_exists(kDir + "/rules/indexer.safetensors"));

  // Finished: the same command again starts over.
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rules > rules5.log 2>&1"), 0)
      << read(kDir + "/rules5.log");
  EXPECT_NE(read(kDir + "/rules5.log").find("holds a finished run"), std::string::npos) << read(kDir + "/rules5.log");
}

// The last step is checkpointed whatever save_every: a finished run extended with --resume --steps M continues from
// its last step. Lines a killed run logged after its checkpoint (and a torn last line) are dropped on resume, so that
// each step is logged once.
TEST_F(DistributedIndexer, AFinishedRunExtendsAndAResumedLogHoldsEachStepOnce) {
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir extend --save_every 0 > extend1.log 2>&1"), 0)
      << read(kDir + "/extend1.log");
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir extend --save_every 0 --resume --steps 6 "
               "> extend2.log 2>&1"), 0)
      << read(kDir + "/extend2.log");
  const std::string e2 = read(kDir + "/extend2.log");
  EXPECT_NE(e2.find("step-00000004 at step 4"), std::string::npos) << e2;
  EXPECT_NE(e2.find("steps changed from 4 (checkpoint) to 6"), std::string::npos) << e2;
  EXPECT_NE(e2.find("indexer step 6/6"), std::string::npos) << e2;
  EXPECT_EQ(e2.find("indexer step 4/6"), std::string::npos) << "step 4 was trained again: " << e2;

  auto logged_steps = [](const std::string& log) {
    std::vector<int64_t> steps;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
    return steps;
  };
  EXPECT_EQ(logged_steps(read(kDir + "/extend/log.jsonl")), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));

  // A run stopped at step 2 whose process went on to log step 3 and half of step 4 before it was killed.
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir killed --stop_at_step 2 > killed1.log 2>&1"), 0)
      << read(kDir + "/killed1.log");
  std::ofstream(kDir + "/killed/log.jsonl", std::ios::app) << "{\"step\":3,\"kl\":1.0}\n{\"step\":4,\"k";
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir killed --resume > killed2.log 2>&1"), 0)
      << read(kDir + "/killed2.log");
  EXPECT_NE(read(kDir + "/killed2.log").find("2 line(s) after step 2"), std::string::npos) << read(kDir + "/killed2.log");
  const std::string log = read(kDir + "/killed/log.jsonl");
  EXPECT_EQ(logged_steps(log), (std::vector<int64_t>{1, 2, 3, 4})) << log;
  EXPECT_EQ(log.find("\"kl\":1.0}"), std::string::npos) << "the killed run's step 3 is still there: " << log;
}

// A checkpoint names the retrieval heads it trained: resuming with a profile regenerated under the same path (other
// heads) is refused as that, not as a missing parameter or, with as many heads per layer, not at all.
TEST_F(DistributedIndexer, ResumeWithAnotherHeadMapIsRefused) {
  ASSERT_EQ(sh("cp heads.h5 heads-mutable.h5"), 0);
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --heads_file heads-mutable.h5 --out_dir reheads "
               "--stop_at_step 2 > reheads1.log 2>&1"), 0)
      << read(kDir + "/reheads1.log");
  ASSERT_EQ(sh(kBin + "rtpurbo-identify-heads --model " + kModel + " --out heads-mutable.h5 --calibration toy "
               "--seq-len 128 --num-sequences 2 --window 32 --retrieval-fraction 0.67 > reheads-id.log 2>&1"), 0)
      << read(kDir + "/reheads-id.log");
  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --heads_file heads-mutable.h5 --out_dir reheads --resume "
               "> reheads2.log 2>&1"), 0);
  const std::string e = read(kDir + "/reheads2.log");
  EXPECT_NE(e.find("it trained the indexer of retrieval heads [\""), std::string::npos) << e;
  EXPECT_NE(e.find("heads_file 'heads-mutable.h5' selects"), std::string::npos) << e;
  EXPECT_EQ(e.find("lacks parameter"), std::string::npos) << e;
  // Put back, it resumes.
  ASSERT_EQ(sh("cp heads.h5 heads-mutable.h5"), 0);
  EXPECT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --heads_file heads-mutable.h5 --out_dir reheads --resume "
               "> reheads3.log 2>&1"), 0)
      << read(kDir + "/reheads3.log");
}

TEST_F(DistributedIndexer, MicroBatchesAccumulateToTheWholeBatchGradient) {
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir whole > whole.log 2>&1"), 0)
      << read(kDir + "/whole.log");
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir micro --micro_batch 1 > micro.log 2>&1"), 0)
      << read(kDir + "/micro.log");
  const double d = max_diff("whole", "micro");
  std::cout << "max |indexer(batch of 4) - indexer(4 micro-batches of 1)| = " << d << "\n";
  EXPECT_LE(d, 1e-5);
}

// A full-size run without weights or a head profile: the architecture of config.json drawn at random, 34% of the
// KV heads drawn as retrieval heads.
TEST_F(DistributedIndexer, RandomModelAndRandomHeadsNeedOnlyAConfig) {
  const std::string cfg_only = kDir + "/config-only";
  rtp::make_directories(cfg_only);
  std::ofstream(cfg_only + "/config.json") << read(kModel + "/config.json");
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rnd --model_dir " + cfg_only +
               " --model_init random --heads_file '' --heads_random --retrieval_fraction 0.34 --steps 2 "
               "> rnd.log 2>&1"), 0)
      << read(kDir + "/rnd.log");
  const std::string log = read(kDir + "/rnd.log");
  EXPECT_NE(log.find("model_init random"), std::string::npos) << log;
  EXPECT_NE(log.find("retrieval heads (random baseline)"), std::string::npos) << log;
  EXPECT_TRUE(rtp::file_exists(kDir + "/rnd/indexer.safetensors"));
  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir rnd2 --model_dir " + kDir +
               "/nowhere --model_init random > rnd2.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/rnd2.log").find("config.json"), std::string::npos) << read(kDir + "/rnd2.log");
}

// data: files, the user's documents: the tiny model with a byte-level tokenizer (its 256 byte tokens: the model's
// vocabulary), a .jsonl and a .txt file, under kDir. Sets `files` to the rtpurbo-train flags that train on them.
void prepare_user_documents(std::string* files) {
  const std::string mdir = kDir + "/model-with-tokenizer";
  rtp::make_directories(mdir);
  ASSERT_EQ(sh("cp " + kModel + "/config.json " + kModel + "/model*.safetensors* " + mdir + "/"), 0);
  {
    auto tok = nlohmann::json::parse(read(std::string(RTP_SOURCE_DIR) + "/data/fixtures/tokenizer/small_tokenizer.json"));
    nlohmann::json bytes = nlohmann::json::object();
    for (auto& [t, id] : tok["model"]["vocab"].items())
      if (id.get<int>() < 256) bytes[t] = id;
    ASSERT_EQ(bytes.size(), 256u);
    tok["model"]["vocab"] = bytes;
    tok["model"]["merges"] = nlohmann::json::array();
    tok["added_tokens"] = nlohmann::json::array();
    std::ofstream(mdir + "/tokenizer.json") << tok.dump();
  }
  // ~9,000 bytes = tokens: 2 held-out sequences of 192, then 4 steps x 4 sequences, and the calibration batch.
  {
    std::ofstream jl(kDir + "/docs.jsonl");
    for (int d = 0; d < 30; ++d) {
      std::string text;
      for (int i = 0; i < 6; ++i)
        text += "Document " + std::to_string(d) + " says that key " + std::to_string((d * 7 + i) % 13) + " opens door " +
                std::to_string((d * 11 + 3 * i) % 17) + ". ";
      jl << nlohmann::json{{"text", text}}.dump() << "\n";
    }
    std::ofstream(kDir + "/essay.txt") << std::string(40, '-') << " a plain text document at the end\n";
  }
  *files = " --model_dir " + mdir + " --data files --data_files docs.jsonl,essay.txt";
}

// The run trains on the documents and says what it read; resume reproduces it exactly.
TEST_F(DistributedIndexer, TrainsOnUserDocuments) {
  std::string files;
  ASSERT_NO_FATAL_FAILURE(prepare_user_documents(&files));
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-full" + files + " > files-full.log 2>&1"), 0)
      << read(kDir + "/files-full.log");
  const std::string log = read(kDir + "/files-full.log");
  EXPECT_NE(log.find("data from data files: "), std::string::npos) << log;
  EXPECT_NE(log.find("held-out block selection"), std::string::npos) << log;
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-part --stop_at_step 2" + files +
               " > files-part1.log 2>&1"), 0) << read(kDir + "/files-part1.log");
  // eval_samples sets how many sequences are held out before the training ones: another count is refused on resume.
  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-part --resume --eval_samples 1" + files +
               " > files-part-held.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/files-part-held.log").find("eval_samples 1 (checkpoint 2) holds out 1 of the documents' "
                                                      "sequences, not 2"), std::string::npos)
      << read(kDir + "/files-part-held.log");
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-part --resume" + files +
               " > files-part2.log 2>&1"), 0) << read(kDir + "/files-part2.log");
  EXPECT_EQ(max_diff("files-full", "files-part"), 0.0);
  // The run learned from the documents: its indexer is not the SVD initialisation a 0-step run writes.
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-init --steps 1 --lr 1e-12" + files +
               " > files-init.log 2>&1"), 0) << read(kDir + "/files-init.log");
  EXPECT_GT(max_diff("files-full", "files-init"), 1e-4);
  // A tokenizer-less model directory is a clear error.
  EXPECT_NE(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-notok --data files --data_files docs.jsonl "
               "> files-notok.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/files-notok.log").find("tokenizer.json"), std::string::npos) << read(kDir + "/files-notok.log");
}

// On the user's documents too, 2 ranks match 1 rank (each rank reads its own slice of the same global batch).
TEST_F(DistributedIndexer, TwoRanksMatchOneRankOnUserDocuments) {
  if (!rtp::dist::distributed_available()) GTEST_SKIP() << kNoGloo;
  std::string files;
  ASSERT_NO_FATAL_FAILURE(prepare_user_documents(&files));
  ASSERT_EQ(sh(kBin + "rtpurbo-train --recipe recipe.yaml --out_dir files-one" + files + " > files-one.log 2>&1"), 0)
      << read(kDir + "/files-one.log");
  ASSERT_NO_FATAL_FAILURE(expect_both_ranks_succeeded(
      two_ranks("--recipe recipe.yaml --out_dir files-two" + files, "files-two"), "files-two"));
  const double d = max_diff("files-one", "files-two");
  std::cout << "data files: max |indexer(1 rank) - indexer(2 ranks)| = " << d << "\n";
  EXPECT_LE(d, 1e-5);
}

TEST_F(DistributedIndexer, BadEnvironmentIsAClearError) {
  EXPECT_NE(sh("WORLD_SIZE=2 RANK=0 " + kBin + "rtpurbo-train --recipe recipe.yaml --out_dir bad > bad.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/bad.log").find("MASTER_ADDR is not set"), std::string::npos) << read(kDir + "/bad.log");
  EXPECT_NE(sh("WORLD_SIZE=2 RANK=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1234 " + kBin +
               "rtpurbo-train --recipe recipe.yaml --out_dir bad > bad2.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/bad2.log").find("RANK='2'"), std::string::npos) << read(kDir + "/bad2.log");
}

// Rank 1 never starts: rank 0 must give up after dist_timeout_s and say so.
TEST_F(DistributedIndexer, MissingRankIsAClearError) {
  if (!rtp::dist::distributed_available()) GTEST_SKIP() << kNoGloo;
  EXPECT_NE(sh("WORLD_SIZE=2 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) + " " + kBin +
               "rtpurbo-train --recipe recipe.yaml --out_dir lonely --dist_timeout_s 4 > lonely.log 2>&1"), 0);
  EXPECT_NE(read(kDir + "/lonely.log").find("rank 0 of 2"), std::string::npos) << read(kDir + "/lonely.log");
}

}  // namespace
