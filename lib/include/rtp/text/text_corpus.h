#pragma once
// User documents as training sequences (recipe `data: files`): every document of the files, in the order given,
// tokenized and followed by a separator token, the whole stream cut into consecutive sequences of seq_len tokens.
//   .txt    the whole file is one document (UTF-8)
//   .jsonl  one document per line, its string field "text" (the format rtpurbo-tokenize reads)
// Documents are read and tokenized only as far as the sequences asked for so far reach: a run of a few hundred
// steps reads the first steps x batch x seq_len tokens of a corpus however large it is. Past the end of the data the
// sequences wrap around (the next epoch, same order). The stream is kept in memory (4 bytes per token read).
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "rtp/text/tokenizer.h"

namespace rtp::text {

struct TextCorpusOptions {
  std::vector<std::string> files;
  int64_t seq_len = 0;
  // The token after each document: "auto" = <|endoftext|> where the tokenizer has it (Qwen's document
  // separator), else none; "" = none; anything else must be one token of the tokenizer.
  std::string separator = "auto";
};

class TextCorpus {
 public:
  // Checks that every file exists and has a known extension; reads nothing yet.
  TextCorpus(TextCorpusOptions options, Tokenizer tokenizer);
  ~TextCorpus();
  TextCorpus(const TextCorpus&) = delete;
  TextCorpus& operator=(const TextCorpus&) = delete;

  // The i-th sequence counted from sequence `first` (i >= 0), wrapping within [first, number of sequences) once the
  // data is exhausted: `first` > 0 keeps the sequences before it (a held-out set) out of the wrap-around.
  // rtp::Error when the data holds no sequence at or after `first`.
  std::vector<int32_t> sequence(int64_t i, int64_t first = 0);
  // Sequences the whole data holds (reads everything).
  int64_t num_sequences();
  int64_t tokens_read() const { return static_cast<int64_t>(stream_.size()); }
  int64_t documents_read() const { return documents_; }
  // The separator token in use, -1 for none.
  int32_t separator_id() const { return separator_id_; }
  // For logs: "N documents, T tokens read so far".
  std::string describe() const;

 private:
  bool read_next_document();  // appends one document (and the separator); false once every file is read
  void open_file(size_t index);

  TextCorpusOptions options_;
  Tokenizer tokenizer_;
  int32_t separator_id_ = -1;
  std::vector<int32_t> stream_;
  size_t file_ = 0;          // the file being read
  bool file_open_ = false;
  std::ifstream in_;         // the open .jsonl file
  int64_t line_ = 0;         // its last line read
  int64_t documents_ = 0;
  bool exhausted_ = false;
};

}  // namespace rtp::text
