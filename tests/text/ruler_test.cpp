// RULER-style generator: exact prompt lengths with the real Qwen3 tokenizer, determinism, answers present in
// the prompt, scoring on hand-made cases.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <regex>

#include "rtp/core/error.h"
#include "rtp/text/ruler.h"

namespace {

namespace ruler = rtp::text::ruler;

const rtp::text::Tokenizer* qwen3() {
  static std::unique_ptr<rtp::text::Tokenizer> tok = [] {
    for (const char* p : {RTP_SOURCE_DIR "/../shared/data/qwen3-tokenizer/tokenizer.json",
                          RTP_SOURCE_DIR "/data/fixtures/tokenizer/qwen3/tokenizer.json"})
      if (std::ifstream(p).good()) return std::make_unique<rtp::text::Tokenizer>(rtp::text::Tokenizer::from_file(p));
    return std::unique_ptr<rtp::text::Tokenizer>();
  }();
  return tok.get();
}

// A plain-text essay with sentence ends, made here (no essays ship with the tests).
std::string test_essay() {
  const char* words[] = {"startups", "grow", "when", "founders", "write", "code", "that", "users", "love", "and",
                         "the", "market", "rewards", "patience", "with", "compounding", "returns", "over", "years"};
  std::string s;
  for (int i = 0; i < 600; ++i) s += std::string(words[(i * 7) % 19]) + ((i % 11 == 10) ? ". " : " ");
  return s;
}

int64_t count_word(const std::string& text, const std::string& w) {
  int64_t n = 0;
  for (size_t p = text.find(w); p != std::string::npos; p = text.find(w, p + 1)) {
    const bool left = p == 0 || !std::isalpha(static_cast<unsigned char>(text[p - 1]));
    const bool right = p + w.size() >= text.size() || !std::isalpha(static_cast<unsigned char>(text[p + w.size()]));
    n += left && right;
  }
  return n;
}

TEST(Ruler, EveryTaskFitsTheExactLength) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  ruler::RulerOptions o;
  o.essay_text = test_essay();
  for (int64_t len : {1024, 4096}) {
    o.max_seq_length = len;
    for (const auto& task : ruler::task_names()) {
      auto s = ruler::generate_sample(task, *qwen3(), o, 0);
      EXPECT_EQ(static_cast<int64_t>(s.prompt_ids.size()) + s.tokens_to_generate, len) << task << " @" << len;
      EXPECT_EQ(qwen3()->encode(s.prompt, false).size(), s.prompt_ids.size()) << task;
      ASSERT_FALSE(s.answers.empty()) << task;
      if (task.rfind("niah", 0) == 0 || task == "vt")
        for (const auto& a : s.answers) EXPECT_NE(s.prompt.find(a), std::string::npos) << task << ": " << a;
    }
  }
}

TEST(Ruler, DeterministicBySeedAndIndex) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  ruler::RulerOptions o;
  o.max_seq_length = 1024;
  auto a = ruler::generate_sample("niah_multiquery", *qwen3(), {1024, 42, test_essay()}, 3);
  auto b = ruler::generate_sample("niah_multiquery", *qwen3(), {1024, 42, test_essay()}, 3);
  auto c = ruler::generate_sample("niah_multiquery", *qwen3(), {1024, 42, test_essay()}, 4);
  auto d = ruler::generate_sample("niah_multiquery", *qwen3(), {1024, 43, test_essay()}, 3);
  EXPECT_EQ(a.prompt, b.prompt);
  EXPECT_EQ(a.answers, b.answers);
  EXPECT_NE(a.prompt, c.prompt);
  EXPECT_NE(a.answers, d.answers);
  EXPECT_EQ(a.answers.size(), 4u);  // 4 queried keys, one value each
  auto mv = ruler::generate_sample("niah_multivalue", *qwen3(), {1024, 42, test_essay()}, 0);
  EXPECT_EQ(mv.answers.size(), 4u);  // 1 key, 4 values
}

TEST(Ruler, WordTasksHaveTheirFrequencies) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  auto cwe = ruler::generate_sample("cwe", *qwen3(), {4096, 42, ""}, 0);
  ASSERT_EQ(cwe.answers.size(), 10u);
  for (const auto& w : cwe.answers) EXPECT_EQ(count_word(cwe.prompt, w), 30) << w;
  auto fwe = ruler::generate_sample("fwe", *qwen3(), {4096, 42, ""}, 0);
  ASSERT_EQ(fwe.answers.size(), 3u);
  const int64_t c2 = count_word(fwe.prompt, fwe.answers[0]), c3 = count_word(fwe.prompt, fwe.answers[1]),
                c4 = count_word(fwe.prompt, fwe.answers[2]);
  EXPECT_GT(c2, c3);
  EXPECT_GT(c3, c4);
  auto vt = ruler::generate_sample("vt", *qwen3(), {2048, 42, ""}, 0);
  // The chain appears in order: VAR A = value, VAR B = VAR A, ...
  size_t at = 0;
  for (size_t i = 1; i < vt.answers.size(); ++i) {
    const auto p = vt.prompt.find("VAR " + vt.answers[i] + " = VAR " + vt.answers[i - 1] + ".");
    ASSERT_NE(p, std::string::npos);
    EXPECT_GT(p, at);
    at = p;
  }
}

TEST(Ruler, ScoringOnHandMadeCases) {
  EXPECT_DOUBLE_EQ(ruler::string_match_all("The numbers are 123 and 456.", {"123", "456"}), 1.0);
  EXPECT_DOUBLE_EQ(ruler::string_match_all("The number is 123.", {"123", "456"}), 0.5);
  EXPECT_DOUBLE_EQ(ruler::string_match_all("nothing", {"123"}), 0.0);
  EXPECT_DOUBLE_EQ(ruler::string_match_all("ABCDE, FGHIJ", {"abcde", "fghij"}), 1.0);  // case-insensitive
  EXPECT_DOUBLE_EQ(ruler::string_match_part("Paris is the answer", {"London", "paris"}), 1.0);
  EXPECT_DOUBLE_EQ(ruler::string_match_part("Rome", {"London", "Paris"}), 0.0);
}

TEST(Ruler, BadTaskAndTooShortLengthAreClearErrors) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  try {
    ruler::generate_sample("niah_single_9", *qwen3(), {}, 0);
    FAIL();
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("niah_multikey_3"), std::string::npos) << e.what();
  }
  try {
    ruler::generate_sample("niah_single_1", *qwen3(), {150, 42, ""}, 0);
    FAIL();
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit max_seq_length 150"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ruler::generate_sample("niah_single_2", *qwen3(), {1024, 42, ""}, 0), rtp::Error);  // needs essay
}

}  // namespace
