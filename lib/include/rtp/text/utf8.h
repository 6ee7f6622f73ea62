#pragma once
// Strict UTF-8 helpers shared by the tokenizer and the tools. "Strict" means what Rust's str accepts: no
// overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace rtp::text {

// Decodes the code point starting at s[i] (i < s.size()). Returns its length in bytes (1..4) and stores the
// code point in *cp, or returns 0 where the bytes at i do not start a valid sequence.
inline std::size_t utf8_decode(std::string_view s, std::size_t i, char32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const std::size_t left = s.size() - i;
  const unsigned b0 = p[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  auto cont = [](unsigned b) { return (b & 0xC0u) == 0x80u; };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left < 2 || !cont(p[1])) return 0;
    *cp = ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    return 2;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left < 3) return 0;
    const unsigned b1 = p[1];
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    if (b1 < lo || b1 > hi || !cont(p[2])) return 0;
    *cp = ((b0 & 0x0Fu) << 12) | ((b1 & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left < 4) return 0;
    const unsigned b1 = p[1];
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (b1 < lo || b1 > hi || !cont(p[2]) || !cont(p[3])) return 0;
    *cp = ((b0 & 0x07u) << 18) | ((b1 & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    return 4;
  }
  return 0;
}

// Offset of the first byte that does not start a valid sequence, or std::string_view::npos if s is valid.
std::size_t utf8_find_invalid(std::string_view s);

// Throws rtp::Error "<what>: invalid UTF-8 at byte offset N (byte 0xXX)" unless s is valid UTF-8.
void utf8_check(std::string_view s, std::string_view what = "input");

// Appends the UTF-8 encoding of cp (cp must be a valid scalar value).
void utf8_append(std::string& out, char32_t cp);

// Converts arbitrary bytes to valid UTF-8 exactly as Rust's String::from_utf8_lossy does (the policy of
// Hugging Face tokenizers' decoders): every maximal prefix of a valid sequence that is cut short, and every
// byte that cannot start a sequence, becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

}  // namespace rtp::text
