// Runs the built rtpurbo-bench-decode on the tiny fixture config on the CPU: what would fail or measure nothing
// later is refused before the model is built (no JSON, no measurement), and a good command line writes its rows.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

const std::string kTiny = RTP_SOURCE_DIR "/data/fixtures/models/qwen3-tiny";  // dense, max_position_embeddings 512

class BenchDecodeCli : public rtp::testing::ToolCliTest {
 protected:
  BenchDecodeCli() : ToolCliTest("rtpurbo-bench-decode") {}
  // `cd CWD && rtpurbo-bench-decode ARGS`.
  rtp::testing::ToolRun run(const std::string& args, const std::string& cwd = RTP_BINARY_DIR) const {
    return run_tool(args, cwd);
  }
  std::string tiny(const std::string& extra) const {
    return "--config " + kTiny + " --device cpu --tokens 2 --out " + out() + " " + extra;
  }
  std::string out() const { return dir_ + "/bench.json"; }
};

TEST_F(BenchDecodeCli, CommandLineMistakesAreUsageErrors) {
  const std::pair<const char*, const char*> cases[] = {
      {"--top-p 0", "--top-p '0' is not valid: expected a number in (0, 1]"},
      {"--retrieval-fraction 0", "--retrieval-fraction '0' is not valid: expected a number in (0, 1]"},
      {"--paths graphs", "--paths graphs replays CUDA graphs: it needs --device cuda"},
      {"--paths eager,graphs-split", "--paths graphs-split replays CUDA graphs: it needs --device cuda"},
      {"--paths grouped", "--paths grouped measures nothing here: grouped runs for MoE configs only"},
      {"--dtype int8", "--dtype 'int8': unknown dtype 'int8'"},
      {"--breakdown", "--breakdown times CUDA graphs: it needs --device cuda"},
      {"--gemv-max-ratio 0", "--gemv-max-ratio '0' is not valid: expected an integer >= 1"},
      // values checked before the model is built; CUDA kernels' knobs refused on a CPU (they changed nothing there
      // and went into the JSON as if applied)
      {"--gemv-layout foo", "--gemv-layout: expected auto, split or whole, found 'foo'"},
      {"--moe-launch-shape 3,3,3", "--moe-launch-shape: expected ROWS,WARPS,AHEAD[,ONE]"},
      {"--gemv-layout split", "--gemv-layout sets a CUDA kernel's choice: it needs --device cuda"},
      {"--cublas-lm-head", "--cublas-lm-head sets a CUDA kernel's choice: it needs --device cuda"},
      {"--separate-norms", "--separate-norms sets a CUDA kernel's choice: it needs --device cuda"},
      {"--chunk-attention flash", "--chunk-attention sets a CUDA kernel's choice: it needs --device cuda"},
      {"--moe-launch-shape 1,4,0", "--moe-launch-shape sets a CUDA kernel's choice: it needs --device cuda"},
  };
  for (const auto& [flags, message] : cases) {
    const auto r = run(tiny(std::string("--lengths 128 ") + flags));
    expect_usage_error(r, message, flags);
    EXPECT_EQ(r.err.find("building"), std::string::npos) << flags << ": the model was built: " << r.err;
  }
  const auto r = run("--device gpu --config " + kTiny);
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--device 'gpu' is not valid: expected cpu, cuda, cuda:N or auto"), std::string::npos)
      << r.err;
  EXPECT_FALSE(rtp::file_exists(out()));
}

// A length the model cannot hold failed after the shorter ones had been measured, with no JSON; an --out that cannot
// be written (a directory taking no files) and a default --config looked up outside the repository root are refused
// before the model is built too.
TEST_F(BenchDecodeCli, LengthsOutputAndConfigAreCheckedFirst) {
  auto r = run(tiny("--lengths 128,100000"));
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--lengths 100000 plus 6 decode steps = 100006 exceeds the model's max_position_embeddings 512"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("length 128"), std::string::npos) << "128 was measured first: " << r.err;

  r = run("--config " + kTiny + " --device cpu --lengths 128 --out /proc/rtpurbo-bench-decode.json");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--out '/proc/rtpurbo-bench-decode.json': cannot create files in directory '/proc'"),
            std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("building"), std::string::npos) << r.err;

  r = run("--device cpu --lengths 128", dir_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("the default 'data/configs/qwen3-0.6b' does not exist here: it is relative to the repository "
                       "root; run from there or pass --config"), std::string::npos) << r.err;
  r = run("--device cpu --lengths 128 --config " + kTiny, dir_);
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("is relative to the repository root, and 'bench/results' does not exist here"),
            std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(out()));
}

TEST_F(BenchDecodeCli, GoodCommandLineWritesEveryCpuPath) {
  const auto r = run(tiny("--lengths 64 --dtype float16"));
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = rtp::read_json_file(out());
  EXPECT_EQ(j["dtype"], "float16");
  // the default paths on a CPU for a dense model: forward and eager, dense and sparse
  ASSERT_EQ(j["results"].size(), 4u) << j.dump(1);
  for (const auto& r : j["results"]) EXPECT_TRUE(r["path"] == "forward" || r["path"] == "eager") << r.dump();
}

}  // namespace
