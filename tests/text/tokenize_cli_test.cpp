// Runs the built rtpurbo-tokenize on tiny JSONL files (encode, decode, and the line-numbered errors).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "rtp/core/file_io.h"
#include "tool_cli.h"

namespace {

namespace fs = std::filesystem;
using rtp::testing::ToolRun;
const std::string kSmall = RTP_SOURCE_DIR "/data/fixtures/tokenizer/small_tokenizer.json";

class TokenizeCli : public rtp::testing::ToolCliTest {
 protected:
  TokenizeCli() : ToolCliTest("rtpurbo-tokenize") {}
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  ToolRun run(const std::string& args) const { return run_tool("--tokenizer " + kSmall + " " + args); }
};

TEST_F(TokenizeCli, EncodesAndDecodes) {
  rtp::write_file_atomic(path("in.jsonl"), "{\"text\": \"abc\"}\n\n{\"text\": \"<s> hello\", \"other\": 1}\n");
  ToolRun r = run("--input " + path("in.jsonl") + " --output " + path("out.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(rtp::read_text_file(path("out.jsonl")),
            "{\"text\":\"abc\",\"ids\":[97,256]}\n{\"text\":\"<s> hello\",\"ids\":[264,32,262]}\n");

  rtp::write_file_atomic(path("ids.jsonl"), "{\"ids\": [97, 256]}\n{\"ids\": [264, 32, 262]}\n");
  r = run("--decode --input " + path("ids.jsonl") + " --output " + path("dec.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(rtp::read_text_file(path("dec.jsonl")),
            "{\"ids\":[97,256],\"text\":\"abc\"}\n{\"ids\":[264,32,262],\"text\":\"<s> hello\"}\n");
  r = run("--decode --skip-special --input " + path("ids.jsonl") + " --output " + path("dec2.jsonl"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(rtp::read_text_file(path("dec2.jsonl")).find("\"text\":\" hello\""), std::string::npos);
}

TEST_F(TokenizeCli, ErrorsNameTheLine) {
  rtp::write_file_atomic(path("bad_json.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \n");
  ToolRun r = run("--input " + path("bad_json.jsonl") + " --output " + path("o1.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("bad_json.jsonl:2: not valid JSON"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(path("o1.jsonl")));  // nothing half-written

  rtp::write_file_atomic(path("no_key.jsonl"), "{\"txt\": \"ok\"}\n");
  r = run("--input " + path("no_key.jsonl") + " --output " + path("o2.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("no_key.jsonl:1: missing key \"text\""), std::string::npos) << r.err;

  rtp::write_file_atomic(path("bad_utf8.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"a\xff\"}\n");
  r = run("--input " + path("bad_utf8.jsonl") + " --output " + path("o3.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("bad_utf8.jsonl:2: invalid UTF-8 at byte offset 11"), std::string::npos) << r.err;

  r = run("--bogus-flag");
  EXPECT_EQ(r.rc, 2);
}

// An id the tokenizer does not know would decode to nothing (as in HF): here it is an error naming the line,
// the id and the vocabulary size.
TEST_F(TokenizeCli, DecodeRejectsIdsOutsideTheVocabulary) {
  for (const char* id : {"999999999", "-1"}) {
    rtp::write_file_atomic(path("ids.jsonl"), std::string("{\"ids\": [97]}\n{\"ids\": [97, ") + id + "]}\n");
    const ToolRun r = run("--decode --input " + path("ids.jsonl") + " --output " + path("o.jsonl"));
    EXPECT_EQ(r.rc, 1) << id;
    EXPECT_NE(r.err.find(std::string("ids.jsonl:2: id ") + id + " is not a token of this tokenizer (vocabulary of "),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(rtp::file_exists(path("o.jsonl")));
  }
}

// A positional argument is not an input file: it used to be ignored while stdin was read.
TEST_F(TokenizeCli, StrayArgumentsAreErrors) {
  rtp::write_file_atomic(path("in.jsonl"), "{\"text\": \"abc\"}\n");
  ToolRun r = run(path("in.jsonl") + " < /dev/null");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("unexpected argument '" + path("in.jsonl") + "'"), std::string::npos) << r.err;
  r = run("--inptu " + path("in.jsonl"));
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("did you mean 'input'"), std::string::npos) << r.err;
}

// --no-special (encoding) and --skip-special (decoding) are refused in the other direction, where they would be
// ignored; nothing is written.
TEST_F(TokenizeCli, SpecialTokenFlagsOfTheOtherDirectionAreErrors) {
  rtp::write_file_atomic(path("in.jsonl"), "{\"text\": \"abc\"}\n");
  ToolRun r = run("--input " + path("in.jsonl") + " --output " + path("out.jsonl") + " --skip-special");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--skip-special is read with --decode only; when encoding, --no-special treats special tokens "
                       "as plain text"),
            std::string::npos)
      << r.err;
  r = run("--decode --input " + path("in.jsonl") + " --output " + path("out.jsonl") + " --no-special");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--no-special is read when encoding only; with --decode, --skip-special drops special tokens "
                       "from the text"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(path("out.jsonl")));
  // Each in its own direction still runs.
  r = run("--input " + path("in.jsonl") + " --output " + path("out.jsonl") + " --no-special");
  EXPECT_EQ(r.rc, 0) << r.err;
}

// The input and the output are checked before any record is read: a directory given as --input read as an empty
// stream ("error reading 'd' after line 0"), and an existing directory as --output failed only at the final rename.
TEST_F(TokenizeCli, InputAndOutputAreCheckedFirst) {
  rtp::write_file_atomic(path("in.jsonl"), "{\"text\": \"abc\"}\n");
  fs::create_directories(path("adir"));
  ToolRun r = run("--input " + path("adir") + " --output " + path("o.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--input '" + path("adir") + "' is a directory, expected a JSONL file"), std::string::npos)
      << r.err;
  r = run("--input " + path("missing.jsonl") + " --output " + path("o.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--input '" + path("missing.jsonl") + "' does not exist"), std::string::npos) << r.err;
  r = run("--input " + path("in.jsonl") + " --output " + path("adir"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--output '" + path("adir") + "' is a directory, expected a file name"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("cannot rename"), std::string::npos) << r.err;
  r = run("--input " + path("in.jsonl") + " --output " + path("nowhere/o.jsonl"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--output '" + path("nowhere/o.jsonl") + "': directory '" + path("nowhere") +
                       "' does not exist"), std::string::npos) << r.err;
  EXPECT_FALSE(rtp::file_exists(path("o.jsonl")));
  EXPECT_TRUE(fs::is_empty(path("adir")));
  // a missing --tokenizer is a command-line mistake
  r = run_tool("--input " + path("in.jsonl"));
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--tokenizer is required"), std::string::npos) << r.err;
}

}  // namespace
