#pragma once
// Byte-level BPE tokenizer that reads a Hugging Face `tokenizer.json` and reproduces what the Python/Rust
// `tokenizers` library gives for it (checked token for token against tokenizers 0.23.2 on the Qwen3
// tokenizer: tests/text/tokenizer_golden_test.cpp).
//
// Supported (anything else the file asks for is an rtp::Error at load time, never a silent difference):
//   normalizer     null or NFC
//   pre_tokenizer  Sequence[Split(Regex = the Qwen2/Qwen3 pattern, behavior Isolated, invert false),
//                           ByteLevel(add_prefix_space false, use_regex false)]
//                  (the Split regex is run by a hand-written scanner; the file's pattern must equal it)
//   model          BPE: vocab, merges ("a b" strings or [a, b] pairs), ignore_merges, unk_token/fuse_unk;
//                  no dropout, no byte_fallback, no continuing_subword_prefix / end_of_word_suffix
//   added_tokens   special or not, with single_word / lstrip / rstrip / normalized as given
//   decoder        ByteLevel; post_processor null or ByteLevel (encode() never adds special tokens, as
//                  HF's encode(text, add_special_tokens=False)); truncation and padding must be null
//
// Objects are immutable after from_file(); copies share the loaded tables. All methods are const and may be
// called from several threads at once (an internal word cache is guarded by a lock).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rtp::text {

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory that holds one.
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  // The same from the JSON text itself (used by tests); `origin` names it in error messages.
  static Tokenizer from_json_string(const std::string& json_text, const std::string& origin = "<string>");

  // Token ids of `text` (which must be valid UTF-8; otherwise rtp::Error naming the byte offset).
  // allow_special=false treats special added tokens (special: true) as plain text, like HF's
  // encode_special_tokens=True; non-special added tokens are still matched.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;

  // Text of `ids`: tokens -> bytes through the byte-level decoder -> UTF-8, with invalid sequences replaced
  // by U+FFFD as HF does. skip_special drops special added tokens. Ids that are no token are skipped, as HF
  // does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // Number of distinct tokens, added tokens included (HF get_vocab_size(with_added_tokens=True)).
  int64_t vocab_size() const;
  // Whether `id` names a token (decode() skips ids that do not, like HF; callers that must not lose text check).
  bool has_id(int64_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token's string as the file spells it (byte-level alphabet for model tokens); rtp::Error if no such id.
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace rtp::text
