#include "rtp/text/tokenizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uniset.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/utf8.h"

namespace rtp::text {

namespace {

using json = nlohmann::json;

// The Split pattern of Qwen2/Qwen2.5/Qwen3 (tokenizer.json spells it with JSON escapes). The scanner below
// (scan_pretokens) implements exactly this regex as Oniguruma runs it for HF tokenizers; a file with any
// other pattern is refused.
constexpr const char* kQwenSplitPattern =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// ---------------------------------------------------------------------------------------------------------
// Unicode classes

enum : uint8_t { kL = 1, kN = 2, kWS = 4, kNL = 8 };  // kNL (\r, \n) always comes with kWS

struct AsciiClasses {
  std::array<uint8_t, 128> cls{};
  AsciiClasses() {
    for (int c = 'a'; c <= 'z'; ++c) cls[c] = kL;
    for (int c = 'A'; c <= 'Z'; ++c) cls[c] = kL;
    for (int c = '0'; c <= '9'; ++c) cls[c] = kN;
    for (int c : {'\t', '\v', '\f', ' '}) cls[c] = kWS;
    cls['\n'] = cls['\r'] = kWS | kNL;
  }
};
const AsciiClasses kAscii;

}  // namespace

// Generated tables (unicode_tables.cpp): how tokenizers' Oniguruma classifies non-ASCII code points for the
// Split regex. They come from probing tokenizers itself (scripts/gen_tokenizer_golden.py --tables) because its
// Oniguruma carries Unicode 16 data while the system ICU may be older (ICU 72 = Unicode 15.0), and a letter
// that ICU does not know yet would split words differently.
namespace detail {
struct CodeRange {
  char32_t lo, hi;
};
extern const CodeRange kLetterRanges[];
extern const std::size_t kLetterRangesCount;
extern const CodeRange kNumberRanges[];
extern const std::size_t kNumberRangesCount;
extern const CodeRange kSpaceRanges[];
extern const std::size_t kSpaceRangesCount;
}  // namespace detail

namespace {

bool in_ranges(const detail::CodeRange* r, std::size_t n, char32_t c) {
  const detail::CodeRange* end = r + n;
  const detail::CodeRange* it =
      std::upper_bound(r, end, c, [](char32_t x, const detail::CodeRange& cr) { return x < cr.lo; });
  return it != r && c <= (it - 1)->hi;
}

uint8_t classify_slow(char32_t c) {
  if (c < 128) return kAscii.cls[c];
  if (in_ranges(detail::kLetterRanges, detail::kLetterRangesCount, c)) return kL;
  if (in_ranges(detail::kNumberRanges, detail::kNumberRangesCount, c)) return kN;
  if (in_ranges(detail::kSpaceRanges, detail::kSpaceRangesCount, c)) return kWS;
  return 0;
}

// \p{L} -> kL, \p{N} -> kN, \s -> kWS (Unicode White_Space: U+00A0, U+0085, U+2028, U+3000 are spaces;
// U+001C..U+001F, U+200B, U+180E are not). A flat table for the BMP, binary search above it.
struct BmpClasses {
  std::vector<uint8_t> cls;
  BmpClasses() : cls(0x10000) {
    for (char32_t c = 0; c < 0x10000; ++c) cls[c] = classify_slow(c);
  }
};
const BmpClasses& bmp_classes() {
  static const BmpClasses t;
  return t;
}

inline uint8_t classify(char32_t c) {
  if (c < 128) return kAscii.cls[c];
  if (c < 0x10000) return bmp_classes().cls[c];
  return classify_slow(c);
}

inline bool is_white_space(char32_t c) { return (classify(c) & kWS) != 0; }

// Rust regex's Unicode \w (used by HF for single_word): Alphabetic, marks, Nd, Pc, Join_Control.
inline bool is_word_char(char32_t c) {
  if (c < 128) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  const auto uc = static_cast<UChar32>(c);
  if (u_hasBinaryProperty(uc, UCHAR_ALPHABETIC) || u_hasBinaryProperty(uc, UCHAR_JOIN_CONTROL)) return true;
  switch (u_charType(uc)) {
    case U_NON_SPACING_MARK:
    case U_COMBINING_SPACING_MARK:
    case U_ENCLOSING_MARK:
    case U_DECIMAL_DIGIT_NUMBER:
    case U_CONNECTOR_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

// Simple case folding restricted to what the contraction alternatives (?i:'s|'t|'re|'ve|'m|'ll|'d) can meet:
// ASCII letters, and U+017F LATIN SMALL LETTER LONG S which folds to 's' (Oniguruma matches it).
inline char fold_for_contraction(char32_t c) {
  if (c < 128) return static_cast<char>((c >= 'A' && c <= 'Z') ? c + 32 : c);
  if (c == 0x017F) return 's';
  return 0;
}

// Last / first code point of a valid UTF-8 string (s non-empty).
char32_t last_code_point(std::string_view s) {
  std::size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  char32_t cp = 0;
  utf8_decode(s, i, &cp);
  return cp;
}

// ---------------------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode alphabet

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};
  ByteAlphabet() {
    cp_to_byte.fill(-1);
    std::array<bool, 256> direct{};
    for (int b = 33; b <= 126; ++b) direct[b] = true;
    for (int b = 161; b <= 172; ++b) direct[b] = true;
    for (int b = 174; b <= 255; ++b) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      byte_to_cp[b] = direct[b] ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
  // Bytes of a token string through the ByteLevel decoder: the mapped bytes if every character belongs to
  // the alphabet, else (as HF does) the token's own UTF-8 bytes.
  std::string token_bytes(const std::string& token) const {
    std::string out;
    out.reserve(token.size());
    std::size_t i = 0;
    char32_t cp;
    while (i < token.size()) {
      const std::size_t len = utf8_decode(token, i, &cp);
      if (len == 0 || cp >= cp_to_byte.size() || cp_to_byte[cp] < 0) return token;
      out.push_back(static_cast<char>(cp_to_byte[cp]));
      i += len;
    }
    return out;
  }
  std::string to_alphabet(std::string_view bytes) const {
    std::string out;
    for (unsigned char b : bytes) utf8_append(out, byte_to_cp[b]);
    return out;
  }
};
const ByteAlphabet kBytes;

// ---------------------------------------------------------------------------------------------------------
// Added-token matcher: leftmost-longest over bytes, like aho-corasick's MatchKind::LeftmostLongest.

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

struct AddedMatcher {
  std::vector<std::string> patterns;  // what is matched (content, normalized if the token is normalized)
  std::vector<int> token;             // index into Impl::added
  std::array<std::vector<int>, 256> by_first;  // pattern indices by first byte, longest first

  bool empty() const { return patterns.empty(); }
  void finish() {
    for (int i = 0; i < static_cast<int>(patterns.size()); ++i)
      by_first[static_cast<unsigned char>(patterns[i][0])].push_back(i);
    for (auto& v : by_first)
      std::stable_sort(v.begin(), v.end(),
                       [&](int a, int b) { return patterns[a].size() > patterns[b].size(); });
  }
  // First match at or after `from`: returns pattern index and sets *start, or -1.
  int find(std::string_view s, std::size_t from, std::size_t* start) const {
    for (std::size_t pos = from; pos < s.size(); ++pos) {
      const auto& cands = by_first[static_cast<unsigned char>(s[pos])];
      if (cands.empty()) continue;
      for (int idx : cands) {
        const std::string& p = patterns[idx];
        if (p.size() <= s.size() - pos && s.compare(pos, p.size(), p) == 0) {
          *start = pos;
          return idx;
        }
      }
    }
    return -1;
  }
};

struct MergeVal {
  uint32_t rank;
  int32_t new_id;
};

struct Scratch {
  std::string normalized;
  std::vector<char32_t> cps;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offs;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string origin;
  const icu::Normalizer2* nfc = nullptr;  // null: no normalizer

  // Model
  std::unordered_map<std::string, int32_t> vocab;  // as spelled in the file (byte alphabet)
  std::unordered_map<uint64_t, MergeVal> merges;   // (left id, right id) -> rank, merged id
  std::array<int32_t, 256> byte_id{};               // id of each single byte, -1 if not in vocab
  std::unordered_map<std::string, int32_t> vocab_by_bytes;  // for ignore_merges only
  bool ignore_merges = false;
  int32_t unk_id = -1;
  bool fuse_unk = false;

  // Added tokens
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, int> added_by_id;  // id -> index into added
  AddedMatcher raw_matcher, norm_matcher;

  // Decoding tables, indexed by id
  std::vector<std::string> id_string;  // token string (added content or vocab spelling)
  std::vector<std::string> id_bytes;   // bytes through the ByteLevel decoder
  std::vector<uint8_t> id_flags;       // 1 = exists, 2 = special
  int64_t vocab_size = 0;

  // Word cache (pre-token bytes -> ids). Results never depend on it.
  static constexpr std::size_t kCacheCapacity = 1u << 18;
  static constexpr std::size_t kCacheMaxWord = 256;
  mutable std::shared_mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void load(const json& j);
  std::string_view normalize(std::string_view piece, std::string& buf) const;
  template <typename OnText>
  void split_added(std::string_view s, const AddedMatcher& m, bool allow_special, std::vector<int32_t>& out,
                   OnText&& on_text) const;
  void pretokenize_and_bpe(std::string_view s, Scratch& scratch, std::vector<int32_t>& out) const;
  void bpe_cached(std::string_view word, std::vector<int32_t>& out) const;
  void bpe(std::string_view word, std::vector<int32_t>& out) const;
};

namespace {

// HF's NFC is the crate unicode-normalization-alignments 0.1.12, whose tables are Unicode 9.0: characters
// assigned later have no decomposition, combine with nothing and have combining class 0. ICU's NFC filtered
// to [:age=9.0:] (characters assigned in 9.0 or before; the others pass through and act as boundaries) is
// exactly that, since Unicode's stability policy freezes decompositions and combining classes once assigned.
const icu::Normalizer2& hf_nfc() {
  struct Holder {
    std::unique_ptr<icu::UnicodeSet> set;
    std::unique_ptr<icu::FilteredNormalizer2> norm;
    Holder() {
      UErrorCode st = U_ZERO_ERROR;
      const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(st);
      RTP_CHECK(U_SUCCESS(st) && nfc, "ICU: cannot get the NFC normalizer: ", u_errorName(st));
      set = std::make_unique<icu::UnicodeSet>(icu::UnicodeString("[:age=9.0:]"), st);
      RTP_CHECK(U_SUCCESS(st), "ICU: cannot build [:age=9.0:]: ", u_errorName(st));
      set->freeze();
      norm = std::make_unique<icu::FilteredNormalizer2>(*nfc, *set);
    }
  };
  static const Holder h;
  return *h.norm;
}

[[noreturn]] void unsupported(const std::string& origin, const std::string& what, const json& value) {
  std::string dumped = value.dump();
  if (dumped.size() > 300) dumped = dumped.substr(0, 300) + "...";
  RTP_THROW("tokenizer '", origin, "': unsupported ", what, ": ", dumped,
            " (rtp::text::Tokenizer implements NFC, the Qwen2/Qwen3 Split+ByteLevel pre-tokenizer, byte-level "
            "BPE and the ByteLevel decoder; see rtp/text/tokenizer.h)");
}

bool is_null_or_missing(const json& j, const char* key) { return !j.contains(key) || j.at(key).is_null(); }

bool flag(const json& j, const char* key, bool dflt) {
  if (!j.contains(key) || j.at(key).is_null()) return dflt;
  return j.at(key).get<bool>();
}

}  // namespace

void Tokenizer::Impl::load(const json& j) {
  RTP_CHECK(j.is_object(), "tokenizer '", origin, "': top level is not a JSON object");
  for (const char* key : {"truncation", "padding"})
    if (!is_null_or_missing(j, key)) unsupported(origin, key, j.at(key));

  // Normalizer: null, NFC, or a Sequence of NFC.
  if (!is_null_or_missing(j, "normalizer")) {
    const json& n = j.at("normalizer");
    auto is_nfc = [](const json& x) { return x.is_object() && x.value("type", "") == "NFC"; };
    bool ok = is_nfc(n);
    if (!ok && n.is_object() && n.value("type", "") == "Sequence" && n.contains("normalizers")) {
      ok = true;
      for (const auto& x : n.at("normalizers")) ok = ok && is_nfc(x);
    }
    if (!ok) unsupported(origin, "normalizer", n);
    nfc = &hf_nfc();
  }

  // Pre-tokenizer: Sequence[Split(Qwen pattern, Isolated), ByteLevel(no prefix space, no regex)].
  {
    const json& p = j.contains("pre_tokenizer") ? j.at("pre_tokenizer") : json();
    bool ok = p.is_object() && p.value("type", "") == "Sequence" && p.contains("pretokenizers") &&
              p.at("pretokenizers").is_array() && p.at("pretokenizers").size() == 2;
    if (ok) {
      const json& split = p.at("pretokenizers")[0];
      const json& bl = p.at("pretokenizers")[1];
      ok = split.is_object() && split.value("type", "") == "Split" && split.value("behavior", "") == "Isolated" &&
           !flag(split, "invert", false) && split.contains("pattern") && split.at("pattern").is_object() &&
           split.at("pattern").contains("Regex");
      if (ok && split.at("pattern").at("Regex").get<std::string>() != kQwenSplitPattern) {
        RTP_THROW("tokenizer '", origin, "': the Split pre-tokenizer's regex is ",
                  split.at("pattern").at("Regex").dump(), "; only the Qwen2/Qwen3 pattern ",
                  json(kQwenSplitPattern).dump(), " is implemented");
      }
      ok = ok && bl.is_object() && bl.value("type", "") == "ByteLevel" && !flag(bl, "add_prefix_space", true) &&
           !flag(bl, "use_regex", true);
    }
    if (!ok) unsupported(origin, "pre_tokenizer", p);
  }

  // Decoder and post-processor.
  {
    const json& d = j.contains("decoder") ? j.at("decoder") : json();
    if (!(d.is_object() && d.value("type", "") == "ByteLevel")) unsupported(origin, "decoder", d);
    if (!is_null_or_missing(j, "post_processor")) {
      const json& pp = j.at("post_processor");
      if (!(pp.is_object() && pp.value("type", "") == "ByteLevel")) unsupported(origin, "post_processor", pp);
    }
  }

  // Model.
  RTP_CHECK(j.contains("model") && j.at("model").is_object(), "tokenizer '", origin, "': no \"model\" object");
  const json& m = j.at("model");
  if (m.value("type", "BPE") != "BPE") unsupported(origin, "model type", m.at("type"));
  if (!is_null_or_missing(m, "dropout") && m.at("dropout").get<double>() != 0.0)
    unsupported(origin, "BPE dropout", m.at("dropout"));
  if (flag(m, "byte_fallback", false)) unsupported(origin, "BPE byte_fallback", m.at("byte_fallback"));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!is_null_or_missing(m, key) && !m.at(key).get<std::string>().empty())
      unsupported(origin, std::string("BPE ") + key, m.at(key));
  ignore_merges = flag(m, "ignore_merges", false);
  fuse_unk = flag(m, "fuse_unk", false);

  RTP_CHECK(m.contains("vocab") && m.at("vocab").is_object(), "tokenizer '", origin,
            "': model.vocab is missing or not an object");
  int64_t max_id = -1;
  vocab.reserve(m.at("vocab").size() * 2);
  for (auto it = m.at("vocab").begin(); it != m.at("vocab").end(); ++it) {
    RTP_CHECK(it.value().is_number_integer(), "tokenizer '", origin, "': vocab entry ", json(it.key()).dump(),
              " has a non-integer id");
    const int64_t id = it.value().get<int64_t>();
    RTP_CHECK(id >= 0 && id < (int64_t{1} << 31), "tokenizer '", origin, "': vocab id ", id, " out of range");
    vocab[it.key()] = static_cast<int32_t>(id);
    max_id = std::max(max_id, id);
  }
  if (!is_null_or_missing(m, "unk_token")) {
    const std::string unk = m.at("unk_token").get<std::string>();
    auto it = vocab.find(unk);
    RTP_CHECK(it != vocab.end(), "tokenizer '", origin, "': unk_token ", json(unk).dump(), " is not in the vocab");
    unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8_append(s, kBytes.byte_to_cp[b]);
    auto it = vocab.find(s);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
  }
  if (ignore_merges) {
    for (const auto& [tok, id] : vocab) {
      std::string bytes = kBytes.token_bytes(tok);
      if (kBytes.to_alphabet(bytes) == tok) vocab_by_bytes.emplace(std::move(bytes), id);
    }
  }

  // Merges: "a b" strings or [a, b] pairs; rank = position. A repeated pair keeps its last rank (as HF).
  if (m.contains("merges") && !m.at("merges").is_null()) {
    const json& ms = m.at("merges");
    RTP_CHECK(ms.is_array(), "tokenizer '", origin, "': model.merges is not an array");
    merges.reserve(ms.size() * 2);
    uint32_t rank = 0;
    for (const auto& e : ms) {
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e.get<std::string>();
        const auto sp = s.find(' ');
        RTP_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, "tokenizer '", origin,
                  "': merge #", rank, " ", json(s).dump(), " is not two tokens separated by one space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        RTP_THROW("tokenizer '", origin, "': merge #", rank, " is neither \"a b\" nor [a, b]: ", e.dump());
      }
      auto ia = vocab.find(a), ib = vocab.find(b), ic = vocab.find(a + b);
      RTP_CHECK(ia != vocab.end() && ib != vocab.end() && ic != vocab.end(), "tokenizer '", origin,
                "': merge #", rank, " (", json(a).dump(), ", ", json(b).dump(),
                ") uses a token that is not in the vocab");
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                           static_cast<uint32_t>(ib->second);
      merges[key] = MergeVal{rank, ic->second};
      ++rank;
    }
  }

  // Added tokens.
  if (j.contains("added_tokens") && !j.at("added_tokens").is_null()) {
    for (const auto& t : j.at("added_tokens")) {
      AddedToken a;
      a.content = t.at("content").get<std::string>();
      if (a.content.empty()) continue;  // HF ignores empty added tokens
      utf8_check(a.content, "added token content");
      const int64_t id = t.at("id").get<int64_t>();
      RTP_CHECK(id >= 0 && id < (int64_t{1} << 31), "tokenizer '", origin, "': added token id ", id,
                " out of range");
      a.id = static_cast<int32_t>(id);
      a.single_word = flag(t, "single_word", false);
      a.lstrip = flag(t, "lstrip", false);
      a.rstrip = flag(t, "rstrip", false);
      a.special = flag(t, "special", false);
      a.normalized = flag(t, "normalized", !a.special);
      RTP_CHECK(!added_by_content.count(a.content), "tokenizer '", origin, "': added token ",
                json(a.content).dump(), " appears twice");
      added_by_content[a.content] = a.id;
      added_by_id[a.id] = static_cast<int>(added.size());
      max_id = std::max<int64_t>(max_id, id);
      added.push_back(std::move(a));
    }
  }
  // HF tries the special tokens first, then the others (only matters for identical patterns).
  std::vector<int> order(added.size());
  for (int i = 0; i < static_cast<int>(added.size()); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](int i) { return added[i].special; });
  for (int i : order) {
    const AddedToken& a = added[i];
    if (a.normalized) {
      std::string buf;
      std::string pat(normalize(a.content, buf));
      if (pat.empty()) continue;
      norm_matcher.patterns.push_back(std::move(pat));
      norm_matcher.token.push_back(i);
    } else {
      raw_matcher.patterns.push_back(a.content);
      raw_matcher.token.push_back(i);
    }
  }
  raw_matcher.finish();
  norm_matcher.finish();

  // Decoding tables.
  const std::size_t n = static_cast<std::size_t>(max_id + 1);
  id_string.assign(n, std::string());
  id_bytes.assign(n, std::string());
  id_flags.assign(n, 0);
  for (const auto& [tok, id] : vocab) {
    if (id_flags[id]) continue;  // two spellings for one id: keep the first seen (HF keeps one too)
    id_string[id] = tok;
    id_flags[id] = 1;
  }
  std::unordered_set<std::string> special_contents;
  for (const auto& a : added)
    if (a.special) special_contents.insert(a.content);
  for (const auto& a : added) {
    id_string[a.id] = a.content;
    id_flags[a.id] = 1;
  }
  for (std::size_t id = 0; id < n; ++id) {
    if (!id_flags[id]) continue;
    id_bytes[id] = kBytes.token_bytes(id_string[id]);
    if (special_contents.count(id_string[id])) id_flags[id] |= 2;
  }
  vocab_size = static_cast<int64_t>(vocab.size());
  for (const auto& a : added)
    if (!vocab.count(a.content)) ++vocab_size;
}

std::string_view Tokenizer::Impl::normalize(std::string_view piece, std::string& buf) const {
  if (!nfc) return piece;
  bool ascii = true;
  for (unsigned char c : piece)
    if (c >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return piece;
  UErrorCode st = U_ZERO_ERROR;
  const icu::StringPiece sp(piece.data(), static_cast<int32_t>(piece.size()));
  const bool already = nfc->isNormalizedUTF8(sp, st);
  RTP_CHECK(U_SUCCESS(st), "ICU NFC check failed: ", u_errorName(st));
  if (already) return piece;
  buf.clear();
  icu::StringByteSink<std::string> sink(&buf, static_cast<int32_t>(piece.size() + 16));
  st = U_ZERO_ERROR;
  nfc->normalizeUTF8(0, sp, sink, nullptr, st);
  RTP_CHECK(U_SUCCESS(st), "ICU NFC normalisation failed: ", u_errorName(st));
  return buf;
}

// HF AddedVocabulary::find_matches + split_with_indices.
template <typename OnText>
void Tokenizer::Impl::split_added(std::string_view s, const AddedMatcher& m, bool allow_special,
                                  std::vector<int32_t>& out, OnText&& on_text) const {
  if (m.empty()) {
    if (!s.empty()) on_text(s);
    return;
  }
  std::size_t start_offset = 0, pos = 0, mstart = 0;
  int idx;
  while ((idx = m.find(s, pos, &mstart)) >= 0) {
    const AddedToken& tok = added[m.token[idx]];
    std::size_t start = mstart, stop = mstart + m.patterns[idx].size();
    pos = stop;  // the automaton goes on after the raw match, whatever happens to it below
    if (tok.special && !allow_special) continue;
    if (tok.single_word) {
      const bool start_space = start == 0 || !is_word_char(last_code_point(s.substr(0, start)));
      char32_t first = 0;
      if (stop < s.size()) utf8_decode(s, stop, &first);
      const bool stop_space = stop == s.size() || !is_word_char(first);
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      std::size_t ns = start;
      while (ns > 0) {
        std::string_view head = s.substr(0, ns);
        const char32_t c = last_code_point(head);
        if (!is_white_space(c)) break;
        std::size_t k = ns - 1;
        while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        ns = k;
      }
      start = std::max(ns, start_offset);
    }
    if (tok.rstrip) {
      char32_t c;
      while (stop < s.size()) {
        const std::size_t len = utf8_decode(s, stop, &c);
        if (len == 0 || !is_white_space(c)) break;
        stop += len;
      }
    }
    if (start_offset < start) on_text(s.substr(start_offset, start - start_offset));
    out.push_back(tok.id);
    start_offset = stop;
  }
  if (start_offset < s.size()) on_text(s.substr(start_offset));
}

// The Qwen2/Qwen3 Split regex, alternative by alternative (leftmost-first, as Oniguruma backtracks):
//   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)    2 [^\r\n\p{L}\p{N}]?\p{L}+    3 \p{N}
//   4  ?[^\s\p{L}\p{N}]+[\r\n]*       5 \s*[\r\n]+                  6 \s+(?!\S)      7 \s+
// Every code point is a letter, a number, a space or none of these, so some alternative matches at every
// position: the matches tile the string and Split(Isolated) yields exactly them.
void Tokenizer::Impl::pretokenize_and_bpe(std::string_view s, Scratch& sc, std::vector<int32_t>& out) const {
  auto& cps = sc.cps;
  auto& cls = sc.cls;
  auto& offs = sc.offs;
  cps.clear();
  cls.clear();
  offs.clear();
  std::size_t i = 0;
  while (i < s.size()) {
    char32_t cp;
    const unsigned char b = static_cast<unsigned char>(s[i]);
    std::size_t len = 1;
    if (b < 0x80) {
      cp = b;
    } else {
      len = utf8_decode(s, i, &cp);
      RTP_CHECK(len > 0, "internal: invalid UTF-8 after normalisation at byte ", i);
    }
    cps.push_back(cp);
    cls.push_back(classify(cp));
    offs.push_back(static_cast<uint32_t>(i));
    i += len;
  }
  const std::size_t n = cps.size();
  offs.push_back(static_cast<uint32_t>(s.size()));
  auto other = [&](std::size_t k) { return (cls[k] & (kL | kN | kWS)) == 0; };

  std::size_t p = 0;
  while (p < n) {
    std::size_t e = 0;
    const char32_t c = cps[p];
    const uint8_t k = cls[p];
    // 1: contractions
    if (c == '\'' && p + 1 < n) {
      const char f1 = fold_for_contraction(cps[p + 1]);
      if (f1 == 's' || f1 == 't' || f1 == 'm' || f1 == 'd') {
        e = p + 2;
      } else if (p + 2 < n && (f1 == 'r' || f1 == 'v' || f1 == 'l')) {
        const char f2 = fold_for_contraction(cps[p + 2]);
        if ((f1 != 'l' && f2 == 'e') || (f1 == 'l' && f2 == 'l')) e = p + 3;
      }
    }
    // 2: optional non-letter/number/newline, then letters
    if (e == 0) {
      std::size_t q = SIZE_MAX;
      if (k & kL) {
        q = p;
      } else if (!(k & (kN | kNL)) && p + 1 < n && (cls[p + 1] & kL)) {
        q = p + 1;
      }
      if (q != SIZE_MAX) {
        while (q < n && (cls[q] & kL)) ++q;
        e = q;
      }
    }
    // 3: one number
    if (e == 0 && (k & kN)) e = p + 1;
    // 4: optional space, symbols/punctuation, trailing newlines
    if (e == 0) {
      std::size_t q = SIZE_MAX;
      if (c == ' ' && p + 1 < n && other(p + 1)) {
        q = p + 1;
      } else if (other(p)) {
        q = p;
      }
      if (q != SIZE_MAX) {
        while (q < n && other(q)) ++q;
        while (q < n && (cls[q] & kNL)) ++q;
        e = q;
      }
    }
    // 5, 6, 7: whitespace runs
    if (e == 0) {
      std::size_t q = p, last_nl = SIZE_MAX;
      while (q < n && (cls[q] & kWS)) {
        if (cls[q] & kNL) last_nl = q;
        ++q;
      }
      if (last_nl != SIZE_MAX) {
        e = last_nl + 1;  // \s*[\r\n]+ : up to the run's last newline
      } else if (q == n || q - p < 2) {
        e = q;  // \s+(?!\S) at the end of the text, or \s+ for a single space before a non-space
      } else {
        e = q - 1;  // \s+(?!\S) leaves the last space to the next word
      }
    }
    bpe_cached(s.substr(offs[p], offs[e] - offs[p]), out);
    p = e;
  }
}

void Tokenizer::Impl::bpe_cached(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1 && byte_id[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_id[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (ignore_merges) {
    auto it = vocab_by_bytes.find(std::string(word));
    if (it != vocab_by_bytes.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() >= kCacheMaxWord) {
    bpe(word, out);
    return;
  }
  std::string key(word);
  {
    std::shared_lock<std::shared_mutex> lock(cache_mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t before = out.size();
  bpe(word, out);
  std::unique_lock<std::shared_mutex> lock(cache_mu);
  if (cache.size() < kCacheCapacity)
    cache.emplace(std::move(key), std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(before), out.end()));
}

// HF models/bpe/word.rs Word::merge_all, reproduced step for step (including how stale heap entries are
// recognised) so that even unusual merge tables give the same tokens.
void Tokenizer::Impl::bpe(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t c;
    int32_t prev, next;
    uint32_t len;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  auto add = [&](int32_t c, uint32_t len) {
    const int32_t n = static_cast<int32_t>(syms.size());
    if (n > 0) syms.back().next = n;
    syms.push_back(Sym{c, n - 1, -1, len});
  };
  int32_t pending_unk = -1;
  uint32_t pending_len = 0;
  for (unsigned char b : word) {
    const int32_t id = byte_id[b];
    if (id >= 0) {
      if (pending_unk >= 0) {
        add(pending_unk, pending_len);
        pending_unk = -1;
      }
      add(id, 1);
    } else if (unk_id >= 0) {
      if (pending_unk >= 0 && fuse_unk) {
        ++pending_len;
      } else {
        if (pending_unk >= 0) add(pending_unk, pending_len);
        pending_unk = unk_id;
        pending_len = 1;
      }
    }  // else: HF drops a character that is neither in the vocab nor covered by an unk token
  }
  if (pending_unk >= 0) add(pending_unk, pending_len);

  struct Merge {
    std::size_t pos;
    uint32_t rank;
    int32_t new_id;
  };
  auto lower = [](const Merge& a, const Merge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto lookup = [&](int32_t a, int32_t b) -> const MergeVal* {
    auto it = merges.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  if (syms.size() >= 2) {
    std::vector<Merge> heap;
    heap.reserve(syms.size());
    for (std::size_t i = 0; i + 1 < syms.size(); ++i)
      if (const MergeVal* mv = lookup(syms[i].c, syms[i + 1].c)) heap.push_back(Merge{i, mv->rank, mv->new_id});
    std::make_heap(heap.begin(), heap.end(), lower);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), lower);
      const Merge top = heap.back();
      heap.pop_back();
      Sym& cur = syms[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      const std::size_t next_pos = static_cast<std::size_t>(cur.next);
      const Sym right = syms[next_pos];
      const MergeVal* target = lookup(cur.c, right.c);
      if (!target || target->new_id != top.new_id) continue;
      cur.c = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next > -1 && static_cast<std::size_t>(right.next) < syms.size())
        syms[static_cast<std::size_t>(right.next)].prev = static_cast<int32_t>(top.pos);
      const Sym now = syms[top.pos];
      if (now.prev >= 0) {
        if (const MergeVal* mv = lookup(syms[static_cast<std::size_t>(now.prev)].c, now.c)) {
          heap.push_back(Merge{static_cast<std::size_t>(now.prev), mv->rank, mv->new_id});
          std::push_heap(heap.begin(), heap.end(), lower);
        }
      }
      if (now.next >= 0 && static_cast<std::size_t>(now.next) < syms.size()) {
        if (const MergeVal* mv = lookup(now.c, syms[static_cast<std::size_t>(now.next)].c)) {
          heap.push_back(Merge{top.pos, mv->rank, mv->new_id});
          std::push_heap(heap.begin(), heap.end(), lower);
        }
      }
    }
  }
  for (const Sym& s : syms)
    if (s.len != 0) out.push_back(s.c);
}

// ---------------------------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  std::string path = tokenizer_json_path;
  if (directory_exists(path)) path += "/tokenizer.json";
  RTP_CHECK(file_exists(path), "tokenizer file '", path, "' does not exist (give a tokenizer.json or a directory "
            "that holds one)");
  const json j = read_json_file(path);
  auto impl = std::make_shared<Impl>();
  impl->origin = path;
  impl->load(j);
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_json_string(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    RTP_THROW("tokenizer '", origin, "' is not valid JSON: ", e.what());
  }
  auto impl = std::make_shared<Impl>();
  impl->origin = origin;
  impl->load(j);
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  utf8_check(text, "text to encode");
  const Impl& im = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  Scratch sc;
  im.split_added(text, im.raw_matcher, allow_special, out, [&](std::string_view piece) {
    const std::string_view norm = im.normalize(piece, sc.normalized);
    // sc.normalized stays untouched below: the inner callback only uses the code-point buffers.
    im.split_added(norm, im.norm_matcher, allow_special, out,
                   [&](std::string_view p2) { im.pretokenize_and_bpe(p2, sc, out); });
  });
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= im.id_flags.size()) continue;
    const uint8_t f = im.id_flags[static_cast<std::size_t>(id)];
    if (!(f & 1) || (skip_special && (f & 2))) continue;
    bytes += im.id_bytes[static_cast<std::size_t>(id)];
  }
  return utf8_lossy(bytes);
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::has_id(int64_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->id_flags.size() &&
         (impl_->id_flags[static_cast<std::size_t>(id)] & 1);
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  auto a = impl_->added_by_content.find(key);
  if (a != impl_->added_by_content.end()) return a->second;
  auto v = impl_->vocab.find(key);
  if (v != impl_->vocab.end()) return v->second;
  return std::nullopt;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  RTP_CHECK(id >= 0 && static_cast<std::size_t>(id) < impl_->id_flags.size() &&
                (impl_->id_flags[static_cast<std::size_t>(id)] & 1),
            "token id ", id, " is not in the vocabulary of '", impl_->origin, "'");
  return impl_->id_string[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->id_flags.size() &&
         (impl_->id_flags[static_cast<std::size_t>(id)] & 2);
}

}  // namespace rtp::text
