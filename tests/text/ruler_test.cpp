// RULER-style generator: exact prompt lengths with the real Qwen3 tokenizer, determinism, answers present in
// the prompt, scoring on hand-made cases.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <tuple>

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

// The keys a NIAH prompt asks about: "... for <k1>, <k2>, and <k3> mentioned in the provided text?".
std::vector<std::string> queried_keys(const std::string& prompt) {
  const auto end = prompt.rfind(" mentioned in the provided text?");
  const auto begin = prompt.rfind(" for ", end) + 5;
  std::string list = prompt.substr(begin, end - begin);
  for (auto p = list.find(", and "); p != std::string::npos; p = list.find(", and ")) list.replace(p, 6, ", ");
  std::vector<std::string> keys;
  for (size_t from = 0;;) {
    const auto comma = list.find(", ", from);
    keys.push_back(list.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
    if (comma == std::string::npos) return keys;
    from = comma + 2;
  }
}

int64_t count_of(const std::string& text, const std::string& what) {
  int64_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// Every queried key stands in the text with its own values only: distractor needles (the needle haystacks draw
// thousands of keys from the same pools) must not reuse it, or the question has two answers.
TEST(Ruler, QueriedKeysHaveOnlyTheirOwnValues) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  struct Case {
    const char* task;
    int64_t length;
    int samples;
  };
  const Case cases[] = {{"niah_single_1", 4096, 3},   {"niah_single_2", 4096, 3},   {"niah_multikey_1", 4096, 3},
                        {"niah_multikey_2", 4096, 3}, {"niah_multikey_3", 4096, 2}, {"niah_multivalue", 4096, 3},
                        {"niah_multiquery", 4096, 3}, {"niah_multikey_2", 32768, 8}};
  for (const auto& c : cases)
    for (int i = 0; i < c.samples; ++i) {
      const auto s = ruler::generate_sample(c.task, *qwen3(), {c.length, 42, test_essay()}, i);
      const auto keys = queried_keys(s.prompt);
      ASSERT_FALSE(keys.empty());
      ASSERT_EQ(s.answers.size() % keys.size(), 0u) << c.task;
      const size_t per_key = s.answers.size() / keys.size();
      for (size_t k = 0; k < keys.size(); ++k) {
        EXPECT_EQ(count_of(s.prompt, "for " + keys[k] + " is: "), static_cast<int64_t>(per_key))
            << c.task << " @" << c.length << " sample " << i << ": key " << keys[k];
        for (size_t j = 0; j < per_key; ++j)
          EXPECT_EQ(count_of(s.prompt, "for " + keys[k] + " is: " + s.answers[k * per_key + j] + "."), 1)
              << c.task << " @" << c.length << " sample " << i << ": " << keys[k] << " -> " << s.answers[k * per_key + j];
      }
    }
}

// In the essay haystack a needle starts a sentence: what comes before it is a sentence end or the start of the
// context (after the one-token fillers that fit the length).
TEST(Ruler, EssayNeedlesFollowASentenceEnd) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  const std::string needle = "One of the special magic";
  for (const char* task : {"niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue", "niah_multiquery"})
    for (int i = 0; i < 4; ++i) {
      const auto s = ruler::generate_sample(task, *qwen3(), {2048, 7, test_essay()}, i);
      int64_t needles = 0;
      for (size_t p = s.prompt.find(needle); p != std::string::npos; p = s.prompt.find(needle, p + 1), ++needles) {
        size_t q = p;
        while (q >= 2 && s.prompt.compare(q - 2, 2, "a ") == 0 && (q == 2 || s.prompt[q - 3] == ' ' || s.prompt[q - 3] == '\n'))
          q -= 2;  // the fillers
        ASSERT_GE(q, 2u);
        const bool starts_context = s.prompt[q - 1] == '\n';
        const bool after_sentence = s.prompt[q - 1] == ' ' && s.prompt[q - 2] == '.';
        EXPECT_TRUE(starts_context || after_sentence)
            << task << " sample " << i << ": ..." << s.prompt.substr(q > 40 ? q - 40 : 0, std::min<size_t>(q, 40))
            << "[" << needle << "...]";
      }
      EXPECT_EQ(needles, static_cast<int64_t>(s.answers.size() + (std::string(task) == "niah_multikey_1" ? 3 : 0)))
          << task;
    }
}

// Word counts of a whitespace-separated text.
std::map<std::string, int64_t> word_counts(const std::string& text) {
  std::map<std::string, int64_t> n;
  std::istringstream in(text);
  for (std::string w; in >> w;) ++n[w];
  return n;
}

TEST(Ruler, WordTasksHaveTheirFrequencies) {
  if (!qwen3()) GTEST_SKIP() << "Qwen3 tokenizer.json not found";
  // cwe: the 10 answers appear `common` times each, every other word `rare` times (RULER: 30 / 3 from 4K on,
  // 6 / 1 below), in a list "1. word 2. word ...".
  for (const auto& [len, common, rare] : {std::tuple<int64_t, int64_t, int64_t>{2048, 6, 1}, {4096, 30, 3}}) {
    auto cwe = ruler::generate_sample("cwe", *qwen3(), {len, 42, ""}, 0);
    ASSERT_EQ(cwe.answers.size(), 10u);
    const auto begin = cwe.prompt.find("\n") + 1, end = cwe.prompt.find("\nQuestion:");
    std::map<std::string, int64_t> counts;
    const std::regex item("(\\d+)\\. ([a-z]+)");
    const std::string list = cwe.prompt.substr(begin, end - begin);
    int64_t next = 1;
    for (std::sregex_iterator it(list.begin(), list.end(), item), stop; it != stop; ++it, ++next) {
      EXPECT_EQ(std::stoll((*it)[1].str()), next) << "list numbering";
      ++counts[(*it)[2].str()];
    }
    ASSERT_GT(counts.size(), 10u) << len;
    for (const auto& [word, n] : counts) {
      const bool answer = std::find(cwe.answers.begin(), cwe.answers.end(), word) != cwe.answers.end();
      EXPECT_EQ(n, answer ? common : rare) << len << ": " << word;
    }
    for (const auto& w : cwe.answers) EXPECT_EQ(counts[w], common) << w;
  }
  // fwe: the answers are the 2nd, 3rd and 4th most frequent coded words ("...." is the 1st), strictly ahead of
  // every other word.
  for (int64_t len : {2048, 4096}) {
    auto fwe = ruler::generate_sample("fwe", *qwen3(), {len, 42, ""}, 1);
    ASSERT_EQ(fwe.answers.size(), 3u);
    const std::string marker = "coded words. ";
    const auto begin = fwe.prompt.find(marker) + marker.size(), end = fwe.prompt.find("\nQuestion:");
    auto counts = word_counts(fwe.prompt.substr(begin, end - begin));
    counts.erase("a");  // the one-token fillers
    const int64_t c2 = counts[fwe.answers[0]], c3 = counts[fwe.answers[1]], c4 = counts[fwe.answers[2]];
    EXPECT_GT(c2, c3) << len;
    EXPECT_GT(c3, c4) << len;
    EXPECT_GT(counts["...."], c2) << len;
    for (const auto& [word, n] : counts)
      if (word != "...." && std::find(fwe.answers.begin(), fwe.answers.end(), word) == fwe.answers.end())
        EXPECT_LT(n, c4) << len << ": " << word;
  }
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
