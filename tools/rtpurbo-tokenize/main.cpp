// rtpurbo-tokenize: encode JSONL text records to token ids, or decode ids back to text, with a Hugging Face
// tokenizer.json (byte-level BPE; see rtp/text/tokenizer.h for what is supported).
//
//   encode:  {"text": "..."}        -> {"text": "...", "ids": [...]}
//   decode:  {"ids": [1, 2, ...]}   -> {"ids": [...], "text": "..."}
//
// One record per line; blank lines are skipped. A line that is not a JSON object, lacks the key, or is not
// valid UTF-8 stops the run with an error naming the line (and the byte offset within it).
#include <cerrno>
#include <cstring>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "main_guard.h"
#include "tool_args.h"
#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/tokenizer.h"
#include "rtp/text/utf8.h"

namespace {

using ojson = nlohmann::ordered_json;

std::string process_line(const rtp::text::Tokenizer& tok, const std::string& line, bool decode_mode,
                         bool allow_special, bool skip_special) {
  const std::size_t bad = rtp::text::utf8_find_invalid(line);
  if (bad != std::string::npos) RTP_THROW("invalid UTF-8 at byte offset ", bad);
  ojson in;
  try {
    in = ojson::parse(line);
  } catch (const ojson::exception& e) {
    RTP_THROW("not valid JSON: ", e.what());
  }
  RTP_CHECK(in.is_object(), "expected a JSON object, found ", in.type_name());
  ojson out;
  if (!decode_mode) {
    RTP_CHECK(in.contains("text"), "missing key \"text\"");
    RTP_CHECK(in["text"].is_string(), "\"text\" is a ", in["text"].type_name(), ", expected a string");
    const std::string text = in["text"].get<std::string>();
    out["text"] = text;
    out["ids"] = tok.encode(text, allow_special);
  } else {
    RTP_CHECK(in.contains("ids"), "missing key \"ids\"");
    RTP_CHECK(in["ids"].is_array(), "\"ids\" is a ", in["ids"].type_name(), ", expected an array of integers");
    std::vector<int32_t> ids;
    ids.reserve(in["ids"].size());
    for (const auto& v : in["ids"]) {
      RTP_CHECK(v.is_number_integer(), "\"ids\" holds ", v.dump(), ", expected integers");
      const auto x = v.get<int64_t>();
      // decode() drops unknown ids (as HF does), which here would turn a wrong id into silently missing text.
      RTP_CHECK(tok.has_id(x), "id ", x, " is not a token of this tokenizer (vocabulary of ", tok.vocab_size(),
                " tokens)");
      ids.push_back(static_cast<int32_t>(x));
    }
    out["ids"] = ids;
    out["text"] = tok.decode(ids, skip_special);
  }
  return out.dump(-1, ' ', false, ojson::error_handler_t::strict);
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-tokenize", [&]() -> int {
    cxxopts::Options opts("rtpurbo-tokenize",
                          "Encode JSONL {\"text\": ...} records to {\"text\", \"ids\"}, or with --decode "
                          "{\"ids\": [...]} to {\"ids\", \"text\"}, using a Hugging Face tokenizer.json.");
    // clang-format off
    opts.add_options()
      ("tokenizer", "tokenizer.json, or a directory (model directory) holding one", cxxopts::value<std::string>())
      ("decode", "decode ids to text instead of encoding", cxxopts::value<bool>()->default_value("false"))
      ("input", "input JSONL file; - for stdin", cxxopts::value<std::string>()->default_value("-"))
      ("output", "output JSONL file, written atomically; - for stdout", cxxopts::value<std::string>()->default_value("-"))
      ("no-special", "encode: treat special tokens (<|im_start|>...) as plain text", cxxopts::value<bool>()->default_value("false"))
      ("skip-special", "decode: drop special tokens", cxxopts::value<bool>()->default_value("false"))
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    const std::string tokenizer_path = rtp::tools::required_arg(args, "tokenizer");
    const bool decode_mode = args["decode"].as<bool>();
    const bool allow_special = !args["no-special"].as<bool>();
    const bool skip_special = args["skip-special"].as<bool>();
    // Each of the two is read by one direction only; ignored in the other, it would look as if it had been applied.
    if (decode_mode && args.count("no-special"))
      throw rtp::tools::UsageError("--no-special is read when encoding only; with --decode, --skip-special drops "
                                   "special tokens from the text");
    if (!decode_mode && args.count("skip-special"))
      throw rtp::tools::UsageError("--skip-special is read with --decode only; when encoding, --no-special treats "
                                   "special tokens as plain text");
    const std::string input = args["input"].as<std::string>();
    const std::string output = args["output"].as<std::string>();
    const bool to_stdout = output == "-";
    // Both ends before any record is read: a directory opens as a stream that reads nothing ("error reading after
    // line 0"), and an --output that cannot be written used to fail only at the rename, after the whole input.
    if (input != "-") rtp::require_input_file(input, "--input", "a JSONL file, or - for stdin");
    if (!to_stdout) rtp::require_output_directory_for(output, "--output");
    const auto tok = rtp::text::Tokenizer::from_file(tokenizer_path);

    std::ifstream file;
    if (input != "-") {
      file.open(input, std::ios::binary);
      RTP_CHECK(file.good(), "cannot open --input '", input, "': ", std::strerror(errno));
    }
    std::istream& in = input == "-" ? std::cin : file;
    const std::string in_name = input == "-" ? "<stdin>" : input;
    std::string out, line;
    std::size_t lineno = 0, records = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      try {
        out += process_line(tok, line, decode_mode, allow_special, skip_special);
      } catch (const rtp::Error& e) {
        RTP_THROW(in_name, ":", lineno, ": ", e.what());
      }
      out += '\n';
      ++records;
      if (to_stdout && out.size() > (1u << 20)) {
        std::cout << out;
        out.clear();
      }
    }
    RTP_CHECK(in.eof(), "error reading '", in_name, "' after line ", lineno);
    if (to_stdout) {
      std::cout << out << std::flush;
      RTP_CHECK(std::cout.good(), "error writing to stdout");
    } else {
      rtp::write_file_atomic(output, out);
    }
    std::cerr << "rtpurbo-tokenize: " << (decode_mode ? "decoded " : "encoded ") << records << " records\n";
    return 0;
  });
}
