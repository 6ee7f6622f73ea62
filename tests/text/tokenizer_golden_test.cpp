// Exact agreement with Hugging Face tokenizers on the real Qwen3 tokenizer, over the golden set written by
// scripts/gen_tokenizer_golden.py (data/fixtures/tokenizer/golden.jsonl).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/tokenizer.h"

namespace {

using rtp::text::Tokenizer;

// The real tokenizer: $RTP_QWEN3_TOKENIZER (file or directory), ../shared/data/qwen3-tokenizer/, or the copy
// under data/fixtures/tokenizer/qwen3/. Empty when none exists.
std::string find_qwen3_tokenizer() {
  if (const char* env = std::getenv("RTP_QWEN3_TOKENIZER")) {
    std::string p = env;
    if (rtp::directory_exists(p)) p += "/tokenizer.json";
    if (rtp::file_exists(p)) return p;
  }
  for (const char* p : {RTP_SOURCE_DIR "/../shared/data/qwen3-tokenizer/tokenizer.json",
                        RTP_SOURCE_DIR "/data/fixtures/tokenizer/qwen3/tokenizer.json"})
    if (rtp::file_exists(p)) return p;
  return {};
}

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::from_file(find_qwen3_tokenizer());
  return tok;
}

std::string show(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

TEST(TokenizerGolden, AgreesWithHuggingFace) {
  if (find_qwen3_tokenizer().empty())
    GTEST_SKIP() << "Qwen3 tokenizer.json not found (set RTP_QWEN3_TOKENIZER or provide "
                    "../shared/data/qwen3-tokenizer/tokenizer.json)";
  const Tokenizer& tok = qwen3();
  std::ifstream in(RTP_SOURCE_DIR "/data/fixtures/tokenizer/golden.jsonl");
  ASSERT_TRUE(in.good()) << "missing data/fixtures/tokenizer/golden.jsonl";
  std::string line;
  int total = 0, decodes = 0, enc_ok = 0, dec_ok = 0, skip_ok = 0, lineno = 0;
  nlohmann::json meta;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains("meta")) {
      meta = j["meta"];
      continue;
    }
    const auto want = j["ids"].get<std::vector<int32_t>>();
    if (j.contains("text")) {
      ++total;
      const std::string text = j["text"];
      const auto got = tok.encode(text);
      if (got == want) {
        ++enc_ok;
      } else {
        ADD_FAILURE() << "line " << lineno << ": encode(" << nlohmann::json(text).dump() << ")\n  got  "
                      << show(got) << "\n  want " << show(want);
      }
    }
    ++decodes;
    const std::string dec = tok.decode(want);
    if (dec == j["decoded"].get<std::string>()) {
      ++dec_ok;
    } else {
      ADD_FAILURE() << "line " << lineno << ": decode gave " << nlohmann::json(dec).dump() << ", want "
                    << j["decoded"].dump();
    }
    const std::string dec_skip = tok.decode(want, /*skip_special=*/true);
    if (dec_skip == j["decoded_skip"].get<std::string>()) {
      ++skip_ok;
    } else {
      ADD_FAILURE() << "line " << lineno << ": decode(skip_special) gave " << nlohmann::json(dec_skip).dump()
                    << ", want " << j["decoded_skip"].dump();
    }
  }
  std::cout << "[golden] tokenizers " << meta.value("tokenizers_version", "?") << ": encode agreement " << enc_ok
            << "/" << total << ", decode " << dec_ok << "/" << decodes << ", decode(skip_special) " << skip_ok
            << "/" << decodes << "\n";
  EXPECT_GT(total, 300);
  EXPECT_EQ(enc_ok, total);
  EXPECT_EQ(dec_ok, decodes);
  EXPECT_EQ(skip_ok, decodes);
  if (meta.contains("vocab_size_with_added")) EXPECT_EQ(tok.vocab_size(), meta["vocab_size_with_added"].get<int64_t>());
}

TEST(TokenizerGolden, VocabularyLookups) {
  if (find_qwen3_tokenizer().empty()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  const Tokenizer& tok = qwen3();
  EXPECT_EQ(tok.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok.token_to_id("<think>"), 151667);
  EXPECT_EQ(tok.id_to_token(151645), "<|im_end|>");
  EXPECT_TRUE(tok.is_special(151643));
  EXPECT_FALSE(tok.is_special(151667));  // <think> is an added token but not special
  EXPECT_EQ(tok.token_to_id("Ġ"), 220);
  EXPECT_EQ(tok.id_to_token(220), "Ġ");
  EXPECT_FALSE(tok.token_to_id("no such token, surely").has_value());
  EXPECT_THROW(tok.id_to_token(-1), rtp::Error);
  EXPECT_THROW(tok.id_to_token(1 << 30), rtp::Error);
  // allow_special=false: special tokens are plain text, non-special added tokens still match.
  const auto ids = tok.encode("<|im_start|><think>", /*allow_special=*/false);
  EXPECT_NE(ids.front(), 151644);
  EXPECT_EQ(ids.back(), 151667);
  EXPECT_EQ(tok.decode(ids), "<|im_start|><think>");
  // Unknown ids are skipped by decode, as HF does.
  EXPECT_EQ(tok.decode({9707, 999999, -5, 1879}), "Hello world");
}

TEST(TokenizerGolden, ThreadsAgree) {
  if (find_qwen3_tokenizer().empty()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  const Tokenizer& tok = qwen3();
  const std::string text = "Concurrent café 你好 🙂 <|im_end|> don't\n\n  x";
  const auto want = tok.encode(text);
  std::vector<std::vector<int32_t>> got(8);
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t)
    ts.emplace_back([&, t] {
      for (int r = 0; r < 200; ++r) got[t] = tok.encode(text + std::to_string(r % 7));
      got[t] = tok.encode(text);
    });
  for (auto& t : ts) t.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

}  // namespace
