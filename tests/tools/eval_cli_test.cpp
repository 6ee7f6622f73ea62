// Runs the built rtpurbo-eval: an option that the chosen --task does not read is a usage error (exit 2) naming the
// option and the tasks that read it, before anything is written; options the task reads pass that check; RULER on a
// model without a tokenizer (the shipped toy) says to give --tokenizer or use --task toy.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

const std::string kToyModel = RTP_SOURCE_DIR "/data/toy-model";
const std::string kTokenizer = RTP_SOURCE_DIR "/data/fixtures/tokenizer/qwen3";

class EvalCli : public rtp::testing::ToolCliTest {
 protected:
  EvalCli() : ToolCliTest("rtpurbo-eval") {}
  std::string out_dir() const { return dir_ + "/eval"; }
};

TEST_F(EvalCli, AnOptionTheTaskDoesNotReadIsAUsageError) {
  const std::string toy = "--task toy --model " + kToyModel + " --out-dir " + out_dir();
  const std::string ruler = "--task ruler --tasks ruler:niah_single_1 --lengths 512 --tokenizer " + kTokenizer +
                            " --dump-prompts " + dir_ + "/prompts.jsonl";
  const std::string logits = "--task logits --model " + kToyModel + " --input " + dir_ + "/in.safetensors --out " +
                             dir_ + "/logits.safetensors";
  const std::pair<std::string, std::string> cases[] = {
      {toy + " --out " + dir_ + "/eval.json",
       "--out is not read by --task toy, only by --task logits; toy and ruler write eval.json / ruler.json and "
       "report.html into --out-dir"},
      {toy + " --dense", "--dense is not read by --task toy, only by --task ruler"},
      {toy + " --tokenizer " + kTokenizer, "--tokenizer is not read by --task toy, only by --task ruler"},
      {ruler + " --seq-len 512", "--seq-len is not read by --task ruler, only by --task toy; ruler takes --lengths"},
      {ruler + " --batch-size 2", "--batch-size is not read by --task ruler, only by --task toy"},
      {ruler + " --out " + dir_ + "/r.json", "--out is not read by --task ruler, only by --task logits"},
      {logits + " --lengths 64", "--lengths is not read by --task logits, only by --task toy and ruler"},
      {logits + " --out-dir " + out_dir(),
       "--out-dir is not read by --task logits, only by --task toy and ruler; logits writes one file, given by --out"},
      {logits + " --resume", "--resume is not read by --task logits, only by --task toy and ruler"},
      // read by the task, but not with what else was given
      {toy + " --no-recall --token-recall-top-p 0.5",
       "--token-recall-top-p is not read with --no-recall, which skips both recalls"},
      {ruler + " --essay " + RTP_SOURCE_DIR "/README.md",
       "--essay is read by the essay-haystack tasks only (ruler:niah_single_2, "},
      // prompts only (no --model): what runs a model is not read
      {ruler + " --stop-after 1", "--stop-after is read when a model is evaluated; without --model, --task ruler only "
                                  "writes the prompts to --dump-prompts"},
      {ruler + " --out-dir " + out_dir(), "--out-dir is read when a model is evaluated"},
      {ruler + " --dense", "--dense is read when a model is evaluated"},
      {ruler + " --prefill-chunk 64", "--prefill-chunk is read when a model is evaluated"},
      {ruler + " --dtype bfloat16", "--dtype is read when a model is evaluated"},
      {"--task ruler --tasks ruler:niah_single_1 --lengths 512 --tokenizer " + kTokenizer,
       "--task ruler needs --model (to evaluate) or --dump-prompts (to write the prompts)"},
  };
  for (const auto& [args, message] : cases) {
    expect_usage_error(run_tool(args), message, args);
    EXPECT_FALSE(rtp::file_exists(out_dir())) << args;
    EXPECT_FALSE(rtp::file_exists(dir_ + "/prompts.jsonl")) << args;
    EXPECT_FALSE(rtp::file_exists(dir_ + "/logits.safetensors")) << args;
  }
}

// The checks pass what the task reads, defaults included: the RULER prompts are written, with the essay's text as
// the haystack of an essay task.
TEST_F(EvalCli, OptionsTheTaskReadsPass) {
  const auto r = run_tool("--task ruler --tasks ruler:niah_single_1 --lengths 512 --samples 2 --seed 7 --tokenizer " +
                          kTokenizer + " --dump-prompts " + dir_ + "/prompts.jsonl");
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string prompts = rtp::read_text_file(dir_ + "/prompts.jsonl");
  size_t lines = 0;
  for (char c : prompts) lines += c == '\n';
  EXPECT_EQ(lines, 2u) << prompts.substr(0, 400);
  // --essay with an essay-haystack task among others
  const auto e = run_tool("--task ruler --tasks ruler:vt,ruler:niah_single_2 --lengths 512 --samples 1 --tokenizer " +
                          kTokenizer + " --essay " + RTP_SOURCE_DIR "/README.md --dump-prompts " + dir_ +
                          "/essay.jsonl");
  ASSERT_EQ(e.rc, 0) << e.err;
  EXPECT_NE(rtp::read_text_file(dir_ + "/essay.jsonl").find("RTPurbo toolkit"), std::string::npos);
}

// An essay with no words said "needs an essay haystack: give a plain-text file" although one was given; one that is
// not UTF-8 was named as "text to encode" at an offset in the prompt.
TEST_F(EvalCli, AnEssayThatCannotBeAHaystackIsNamed) {
  const std::string ruler = "--task ruler --tasks ruler:niah_single_2 --lengths 512 --samples 1 --tokenizer " +
                            kTokenizer + " --dump-prompts " + dir_ + "/prompts.jsonl --essay ";
  rtp::write_file_atomic(dir_ + "/blank.txt", " \n\t\n");
  auto r = run_tool(ruler + dir_ + "/blank.txt");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--essay '" + dir_ + "/blank.txt' holds no words"), std::string::npos) << r.err;
  rtp::write_file_atomic(dir_ + "/bad.txt", std::string("an essay \xC0\xAF here"));
  r = run_tool(ruler + dir_ + "/bad.txt");
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("--essay '" + dir_ + "/bad.txt': invalid UTF-8 at byte offset 9 (byte 0xC0)"),
            std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(dir_ + "/prompts.jsonl"));
}

TEST_F(EvalCli, RulerOnAModelWithoutATokenizerNamesTheWayOut) {
  const auto r = run_tool("--task ruler --model " + kToyModel + " --tasks ruler:niah_single_1 --lengths 512 "
                          "--samples 1 --out-dir " + out_dir());
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("has no tokenizer.json, and RULER prompts are text: give the model's tokenizer with "
                       "--tokenizer DIR (a token-id model such as the shipped toy is evaluated with --task toy)"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(rtp::file_exists(out_dir() + "/ruler.json"));
}

}  // namespace
