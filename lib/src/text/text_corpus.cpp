#include "rtp/text/text_corpus.h"

#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/utf8.h"

namespace rtp::text {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

TextCorpus::TextCorpus(TextCorpusOptions options, Tokenizer tokenizer)
    : options_(std::move(options)), tokenizer_(std::move(tokenizer)) {
  RTP_CHECK(options_.seq_len >= 1, "text corpus: seq_len must be >= 1, found ", options_.seq_len);
  RTP_CHECK(!options_.files.empty(), "text corpus: no data files given (data_files: comma-separated .txt or .jsonl)");
  for (const auto& f : options_.files) {
    RTP_CHECK(ends_with(f, ".txt") || ends_with(f, ".jsonl"), "data file '", f,
              "': expected a .txt file (one document) or a .jsonl file (one {\"text\": ...} document per line)");
    RTP_CHECK(!directory_exists(f), "data file '", f, "' is a directory, expected a .txt or .jsonl file");
    RTP_CHECK(file_exists(f), "data file '", f, "' does not exist");
  }
  if (options_.separator == "auto") {
    if (auto id = tokenizer_.token_to_id("<|endoftext|>")) separator_id_ = *id;
  } else if (!options_.separator.empty()) {
    auto id = tokenizer_.token_to_id(options_.separator);
    RTP_CHECK(id.has_value(), "data_separator '", options_.separator,
              "' is not a token of the tokenizer: give one token (e.g. <|endoftext|>), \"auto\" or \"\" for none");
    separator_id_ = *id;
  }
}

TextCorpus::~TextCorpus() = default;

void TextCorpus::open_file(size_t index) {
  file_ = index;
  line_ = 0;
  if (in_.is_open()) in_.close();
  const std::string& f = options_.files[index];
  if (ends_with(f, ".jsonl")) {
    in_.open(f, std::ios::binary);
    RTP_CHECK(in_.good(), "cannot open data file '", f, "' for reading");
  }
  file_open_ = true;
}

bool TextCorpus::read_next_document() {
  while (file_ < options_.files.size()) {
    if (!file_open_) open_file(file_);
    const std::string& f = options_.files[file_];
    std::string text;
    bool got = false;
    if (ends_with(f, ".txt")) {
      text = read_text_file(f);
      utf8_check(text, "data file '" + f + "'");
      got = true;
      file_open_ = false;
      ++file_;
    } else {
      std::string line;
      while (!got && std::getline(in_, line)) {
        ++line_;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines carry no document
        const std::string where = "data file '" + f + "' line " + std::to_string(line_);
        utf8_check(line, where);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          RTP_THROW(where, ": not a JSON object (", e.what(), ")");
        }
        RTP_CHECK(j.is_object() && j.contains("text"), where, ": expected an object with a \"text\" field");
        RTP_CHECK(j["text"].is_string(), where, ": \"text\" is a ", j["text"].type_name(), ", expected a string");
        text = j["text"].get<std::string>();
        got = true;
      }
      if (!got) {
        RTP_CHECK(!in_.bad(), "error reading data file '", f, "'");
        file_open_ = false;
        ++file_;
        continue;
      }
    }
    // Documents are tokenized as text: a special token spelled inside a document is not a control token.
    const std::vector<int32_t> ids = tokenizer_.encode(text, /*allow_special=*/false);
    stream_.insert(stream_.end(), ids.begin(), ids.end());
    if (separator_id_ >= 0) stream_.push_back(separator_id_);
    ++documents_;
    return true;
  }
  exhausted_ = true;
  return false;
}

int64_t TextCorpus::num_sequences() {
  while (read_next_document()) {
  }
  return tokens_read() / options_.seq_len;
}

std::vector<int32_t> TextCorpus::sequence(int64_t i, int64_t first) {
  RTP_CHECK(i >= 0 && first >= 0, "text corpus: sequence index must be >= 0, found ", i, " (first ", first, ")");
  const int64_t L = options_.seq_len;
  int64_t s = first + i;
  while (!exhausted_ && tokens_read() < (s + 1) * L) read_next_document();
  if (tokens_read() < (s + 1) * L) {
    // Past the end of the data: wrap within [first, n).
    const int64_t n = tokens_read() / L;
    RTP_CHECK(n > first, "the data files hold ", tokens_read(), " tokens in ", documents_, " documents: ", n,
              " sequence(s) of seq_len ", L, ", but at least ", first + 1, " are needed (", first,
              " held out for evaluation, then training): give more text or a shorter seq_len");
    s = first + i % (n - first);
  }
  return std::vector<int32_t>(stream_.begin() + s * L, stream_.begin() + (s + 1) * L);
}

std::string TextCorpus::describe() const {
  return std::to_string(documents_) + " documents, " + std::to_string(tokens_read()) + " tokens read" +
         (exhausted_ ? " (all of the data)" : " so far");
}

}  // namespace rtp::text
