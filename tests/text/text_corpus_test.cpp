// TextCorpus (data: files) against the packing written out here: each document encoded on its own, the separator
// after it, the stream cut into seq_len pieces; wrap-around past the end and the held-out prefix; errors that
// name the file and line.
#include "rtp/text/text_corpus.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

namespace {

using rtp::text::TextCorpus;
using rtp::text::TextCorpusOptions;
using rtp::text::Tokenizer;

const std::string kTok = RTP_SOURCE_DIR "/data/fixtures/tokenizer/small_tokenizer.json";
const std::string kDir = RTP_BINARY_DIR "/tmp-text-corpus-test";

std::string write(const std::string& name, const std::string& contents) {
  rtp::make_directories(kDir);
  const std::string path = kDir + "/" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

// The documents of the fixture files below, in reading order.
const std::vector<std::string> kDocs = {
    "hello world, a first document of plain text.\nWith a second line and  double spaces.",
    "hello again: the first JSONL document",
    "a <s> spelled inside a document is text, not the separator",
    "abcabc hello hello hello ab ab ab aa aa bc bc",
    "the last document, short",
};

std::vector<std::string> fixture_files() {
  const std::string txt = write("doc.txt", kDocs[0]);
  // A blank line between documents carries none.
  const std::string jsonl = write("docs.jsonl", "{\"text\": \"hello again: the first JSONL document\"}\n\n"
                                                "{\"text\": \"a <s> spelled inside a document is text, not the separator\", \"id\": 7}\n"
                                                "{\"text\": \"abcabc hello hello hello ab ab ab aa aa bc bc\"}\n");
  const std::string txt2 = write("last.txt", kDocs[4]);
  return {txt, jsonl, txt2};
}

std::vector<int32_t> expected_stream(const Tokenizer& tok, int32_t sep) {
  std::vector<int32_t> s;
  for (const auto& d : kDocs) {
    const auto ids = tok.encode(d, /*allow_special=*/false);
    s.insert(s.end(), ids.begin(), ids.end());
    if (sep >= 0) s.push_back(sep);
  }
  return s;
}

TEST(TextCorpus, SequencesAreTheDocumentsPackedAndCut) {
  const Tokenizer tok = Tokenizer::from_file(kTok);
  const int32_t sep = *tok.token_to_id("<s>");
  for (const int64_t L : {1, 7, 16, 33}) {
    TextCorpus corpus(TextCorpusOptions{fixture_files(), L, "<s>"}, tok);
    EXPECT_EQ(corpus.separator_id(), sep);
    const auto stream = expected_stream(tok, sep);
    const int64_t n = static_cast<int64_t>(stream.size()) / L;
    ASSERT_GE(n, 3) << "fixture too short for seq_len " << L;
    // Asked in order, then past the end: sequence i of the stream, then the wrap-around (same order again).
    for (int64_t i = 0; i < 2 * n + 3; ++i) {
      const int64_t s = i % n;
      const std::vector<int32_t> want(stream.begin() + s * L, stream.begin() + (s + 1) * L);
      ASSERT_EQ(corpus.sequence(i), want) << "seq_len " << L << ", sequence " << i;
    }
    EXPECT_EQ(corpus.documents_read(), 5);
    EXPECT_EQ(corpus.num_sequences(), n);
    // A held-out prefix of 2 sequences stays out of the wrap-around.
    for (int64_t i = 0; i < 2 * (n - 2) + 1; ++i) {
      const int64_t s = 2 + i % (n - 2);
      const std::vector<int32_t> want(stream.begin() + s * L, stream.begin() + (s + 1) * L);
      ASSERT_EQ(corpus.sequence(i, 2), want) << "seq_len " << L << ", training sequence " << i;
    }
  }
}

TEST(TextCorpus, ReadsOnlyAsFarAsAsked) {
  const Tokenizer tok = Tokenizer::from_file(kTok);
  TextCorpus corpus(TextCorpusOptions{fixture_files(), 4, ""}, tok);
  EXPECT_EQ(corpus.separator_id(), -1);  // "" = none
  corpus.sequence(0);
  EXPECT_EQ(corpus.documents_read(), 1);  // the first document alone holds more than 4 tokens
  EXPECT_NE(corpus.describe().find("so far"), std::string::npos) << corpus.describe();
  // Without a separator token in the tokenizer, "auto" means none.
  TextCorpus automatic(TextCorpusOptions{fixture_files(), 4, "auto"}, tok);
  EXPECT_EQ(automatic.separator_id(), -1);
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const rtp::Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(TextCorpus, BadInputNamesFileLineAndWhatWasExpected) {
  const Tokenizer tok = Tokenizer::from_file(kTok);
  expect_error([&] { TextCorpus(TextCorpusOptions{{kDir + "/nope.txt"}, 8, ""}, tok); }, {"nope.txt", "does not exist"});
  expect_error([&] { TextCorpus(TextCorpusOptions{{write("x.csv", "a")}, 8, ""}, tok); }, {"x.csv", ".jsonl"});
  expect_error([&] { TextCorpus(TextCorpusOptions{{write("a.txt", "a")}, 8, "<nope>"}, tok); },
               {"data_separator", "<nope>"});
  const std::string bad = write("bad.jsonl", "{\"text\": \"fine\"}\n{\"txt\": \"wrong key\"}\n");
  expect_error([&] { TextCorpus(TextCorpusOptions{{bad}, 1, ""}, tok).num_sequences(); },
               {"bad.jsonl' line 2", "\"text\""});
  const std::string notjson = write("notjson.jsonl", "{\"text\": \"fine\"}\n\n{oops\n");
  expect_error([&] { TextCorpus(TextCorpusOptions{{notjson}, 1, ""}, tok).num_sequences(); },
               {"notjson.jsonl' line 3", "JSON"});
  const std::string utf = write("utf.jsonl", std::string("{\"text\": \"caf\xff\"}\n"));
  expect_error([&] { TextCorpus(TextCorpusOptions{{utf}, 1, ""}, tok).num_sequences(); },
               {"utf.jsonl' line 1", "invalid UTF-8"});
  // Too little text for one training sequence after the held-out ones.
  const std::string small = write("small.txt", "hello");
  expect_error([&] { TextCorpus(TextCorpusOptions{{small}, 4, ""}, tok).sequence(0, 1); },
               {"held out", "seq_len 4"});
}

}  // namespace
