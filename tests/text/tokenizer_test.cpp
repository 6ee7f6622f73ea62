// Hand-made tokenizer.json cases (data/fixtures/tokenizer/small_tokenizer.json: the 256 byte tokens, a few
// merges, added tokens with every flag); expected ids come from Hugging Face tokenizers 0.23.2 on the same file.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <functional>
#include <string>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/tokenizer.h"
#include "rtp/text/utf8.h"

namespace {

using rtp::text::Tokenizer;
using Ids = std::vector<int32_t>;

const std::string kSmall = RTP_SOURCE_DIR "/data/fixtures/tokenizer/small_tokenizer.json";

nlohmann::json small_json() { return rtp::read_json_file(kSmall); }

Tokenizer from(const nlohmann::json& j) { return Tokenizer::from_json_string(j.dump(), "test"); }

std::string thrown(const std::function<void()>& f) {
  try {
    f();
  } catch (const rtp::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Tokenizer, MergesApplyByRank) {
  const Tokenizer a = Tokenizer::from_file(kSmall);
  EXPECT_EQ(a.encode("abc"), (Ids{97, 256}));  // "b c" has rank 0: a + bc
  EXPECT_EQ(a.encode("aaa"), (Ids{258, 97}));  // equal ranks: leftmost first
  EXPECT_EQ(a.encode("aaaa"), (Ids{258, 258}));
  EXPECT_EQ(a.encode("hello world"), (Ids{262, 263, 111, 114, 108, 100}));

  auto j = small_json();
  auto& merges = j["model"]["merges"];
  std::swap(merges[0], merges[1]);  // now "a b" outranks "b c": ab + c
  EXPECT_EQ(from(j).encode("abc"), (Ids{257, 99}));

  // Merges as [a, b] pairs instead of "a b" strings.
  auto k = small_json();
  for (auto& m : k["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const auto sp = s.find(' ');
    m = nlohmann::json::array({s.substr(0, sp), s.substr(sp + 1)});
  }
  EXPECT_EQ(from(k).encode("abc"), (Ids{97, 256}));
  EXPECT_EQ(from(k).encode("hello world"), (Ids{262, 263, 111, 114, 108, 100}));
}

TEST(Tokenizer, AddedTokenFlags) {
  const Tokenizer t = Tokenizer::from_file(kSmall);
  EXPECT_EQ(t.vocab_size(), 270);
  EXPECT_EQ(t.encode("x <L> y"), (Ids{120, 265, 32, 121}));   // lstrip eats the space before
  EXPECT_EQ(t.encode("x  <L>y"), (Ids{120, 265, 121}));
  EXPECT_EQ(t.encode("x <R>  y"), (Ids{120, 32, 266, 121}));  // rstrip eats the spaces after
  EXPECT_EQ(t.encode("a mask b"), (Ids{97, 32, 267, 32, 98}));  // single_word
  EXPECT_EQ(t.encode("amask b"), (Ids{97, 109, 97, 115, 107, 32, 98}));
  EXPECT_EQ(t.encode("a mask_b"), (Ids{97, 32, 109, 97, 115, 107, 95, 98}));
  EXPECT_EQ(t.encode("a mask, b"), (Ids{97, 32, 267, 44, 32, 98}));
  EXPECT_EQ(t.encode("mask"), (Ids{267}));
  // normalized=true: "e\u0301t" is matched in NFC form, whether the input is composed or not.
  EXPECT_EQ(t.encode("\u00e9\u0301t \u00e9t e\u0301t"), (Ids{195, 169, 204, 129, 116, 32, 268, 32, 268}));
  // Longest match first: "<s>x" (not special) beats "<s>" (special).
  EXPECT_EQ(t.encode("<s> <s>x <s>xx"), (Ids{264, 32, 269, 32, 269, 120}));
  // allow_special=false: special "<s>" is text, non-special "<s>x" still matches.
  EXPECT_EQ(t.encode("<s> <s>x", /*allow_special=*/false), (Ids{60, 115, 62, 32, 269}));
  EXPECT_EQ(t.decode({264, 104, 265}), "<s>h<L>");
  EXPECT_EQ(t.decode({264, 104, 265}, /*skip_special=*/true), "h<L>");
  EXPECT_EQ(t.token_to_id("<R>"), 266);
  EXPECT_EQ(t.id_to_token(256), "bc");
  EXPECT_EQ(t.token_to_id("\xc4\xa0"), 32);  // "Ġ" is the byte-level spelling of a space
}

TEST(Tokenizer, InvalidUtf8NamesTheOffset) {
  const Tokenizer t = Tokenizer::from_file(kSmall);
  EXPECT_NE(thrown([&] { t.encode("ab\xff" "c"); }).find("byte offset 2"), std::string::npos);
  EXPECT_NE(thrown([&] { t.encode("abc\xe2\x82"); }).find("byte offset 3"), std::string::npos);   // cut short
  EXPECT_NE(thrown([&] { t.encode("\xed\xa0\x80"); }).find("byte offset 0"), std::string::npos);   // surrogate
  EXPECT_NE(thrown([&] { t.encode("xy\xc0\xaf"); }).find("byte offset 2"), std::string::npos);     // overlong
  EXPECT_NE(thrown([&] { t.encode("\xf4\x90\x80\x80"); }).find("byte offset 0"), std::string::npos);  // > U+10FFFF
  EXPECT_EQ(t.encode(""), Ids{});
}

TEST(Tokenizer, LossyDecodingLikeRust) {
  using rtp::text::utf8_lossy;
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("\xE2\x82" "A"), r + "A");        // one U+FFFD for a cut-short sequence
  EXPECT_EQ(utf8_lossy("\xF0\x80"), r + r);               // F0 80: 80 cannot follow F0
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), r + r + r);       // surrogates
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), r + r);
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), r);               // truncated emoji at the end
  EXPECT_EQ(utf8_lossy("ok \xF0\x9F\x98\x80"), "ok \xF0\x9F\x98\x80");
  // Through the tokenizer: byte tokens 0xE2 0x82 (ids 226 130 in the small vocab) then "A".
  const Tokenizer t = Tokenizer::from_file(kSmall);
  EXPECT_EQ(t.decode({226, 130, 65}), r + "A");
}

TEST(Tokenizer, RefusesWhatItDoesNotImplement) {
  auto j = small_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+|\\w+";
  EXPECT_NE(thrown([&] { from(j); }).find("only the Qwen2/Qwen3 pattern"), std::string::npos);
  j = small_json();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(thrown([&] { from(j); }).find("unsupported normalizer"), std::string::npos);
  j = small_json();
  j["model"]["byte_fallback"] = true;
  EXPECT_NE(thrown([&] { from(j); }).find("byte_fallback"), std::string::npos);
  j = small_json();
  j["model"]["merges"].push_back("zz qq");
  EXPECT_NE(thrown([&] { from(j); }).find("not in the vocab"), std::string::npos);
  j = small_json();
  j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  EXPECT_NE(thrown([&] { from(j); }).find("unsupported pre_tokenizer"), std::string::npos);
  EXPECT_NE(thrown([] { Tokenizer::from_file("/nonexistent/dir"); }).find("does not exist"), std::string::npos);
  EXPECT_NE(thrown([] { Tokenizer::from_json_string("{oops", "x.json"); }).find("not valid JSON"),
            std::string::npos);
}

TEST(Tokenizer, IgnoreMergesUsesWholeWords) {
  auto j = small_json();
  j["model"]["vocab"]["abcd"] = 300;
  j["model"]["ignore_merges"] = true;
  const Tokenizer t = from(j);
  EXPECT_EQ(t.encode("abcd"), (Ids{300}));
  EXPECT_EQ(t.encode("abc"), (Ids{97, 256}));
}

}  // namespace
