// rtpurbo-bench-tokenizer: single-thread encode/decode throughput of rtp::text::Tokenizer on a multilingual
// corpus (by default the texts of the golden set, repeated to --target-mb), written as JSON with machine info.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "main_guard.h"
#include "tool_args.h"
#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/text/tokenizer.h"

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto c = line.find(':');
      return c == std::string::npos ? line : line.substr(c + 2);
    }
  return "unknown";
}

std::string command_output(const char* cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd, "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-bench-tokenizer", [&]() -> int {
    cxxopts::Options opts("rtpurbo-bench-tokenizer",
                          "Single-thread encode/decode throughput of the byte-level BPE tokenizer.");
    // clang-format off
    opts.add_options()
      ("tokenizer", "tokenizer.json or its directory", cxxopts::value<std::string>()->default_value("../shared/data/qwen3-tokenizer"))
      ("corpus", "JSONL with {\"text\": ...} records", cxxopts::value<std::string>()->default_value("data/fixtures/tokenizer/golden.jsonl"))
      ("target-mb", "repeat the corpus texts up to this many MB (1e6 bytes)", cxxopts::value<std::string>()->default_value("20"))
      ("output-dir", "where tokenizer-<host>.json is written", cxxopts::value<std::string>()->default_value("bench/results"))
      ("h,help", "print this help");
    // clang-format on
    auto args = rtp::tools::parse_strict(opts, argc, argv);
    if (args.count("help")) {
      std::cout << opts.help() << "\n";
      return 0;
    }
    const double target_mb = rtp::tools::number_arg(args, "target-mb", rtp::config::above(0));
    std::string command;
    for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);

    auto t0 = std::chrono::steady_clock::now();
    const auto tok = rtp::text::Tokenizer::from_file(args["tokenizer"].as<std::string>());
    const double load_s = seconds_since(t0);

    std::vector<std::string> unique;
    {
      std::ifstream in(args["corpus"].as<std::string>());
      RTP_CHECK(in.good(), "cannot open --corpus '", args["corpus"].as<std::string>(), "'");
      std::string line;
      for (int64_t n = 1; std::getline(in, line); ++n) {
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          RTP_THROW("--corpus '", args["corpus"].as<std::string>(), "' line ", n, ": not valid JSON (", e.what(), ")");
        }
        // A record without a text would be left out of the measured bytes unseen.
        RTP_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(), "--corpus '",
                  args["corpus"].as<std::string>(), "' line ", n, ": expected {\"text\": \"...\"}, found ",
                  j.dump().substr(0, 80));
        unique.push_back(j["text"].get<std::string>());
      }
    }
    RTP_CHECK(!unique.empty(), "the corpus holds no {\"text\": ...} records");
    std::size_t unique_bytes = 0;
    for (const auto& s : unique) unique_bytes += s.size();
    // The main pass repeats the texts until target-mb bytes: with no bytes it would never get there.
    RTP_CHECK(unique_bytes > 0, "the corpus's texts are all empty: nothing to measure (give texts with characters)");

    // Cold pass: every distinct text once, on a fresh tokenizer (empty word cache).
    t0 = std::chrono::steady_clock::now();
    std::size_t cold_tokens = 0;
    for (const auto& s : unique) cold_tokens += tok.encode(s).size();
    const double cold_s = seconds_since(t0);

    // Main pass: the texts repeated (as separate documents) up to target-mb.
    const double target = target_mb * 1e6;
    std::vector<const std::string*> docs;
    std::size_t total_bytes = 0;
    while (static_cast<double>(total_bytes) < target)
      for (const auto& s : unique) {
        docs.push_back(&s);
        total_bytes += s.size();
      }
    std::vector<std::vector<int32_t>> ids(docs.size());
    t0 = std::chrono::steady_clock::now();
    std::size_t tokens = 0;
    for (std::size_t i = 0; i < docs.size(); ++i) {
      ids[i] = tok.encode(*docs[i]);
      tokens += ids[i].size();
    }
    const double enc_s = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    std::size_t decoded_bytes = 0;
    for (const auto& v : ids) decoded_bytes += tok.decode(v).size();
    const double dec_s = seconds_since(t0);

    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    nlohmann::ordered_json r;
    r["benchmark"] = "tokenizer";
    r["tokenizer"] = args["tokenizer"].as<std::string>();
    r["corpus"] = args["corpus"].as<std::string>();
    r["threads"] = 1;
    r["load_seconds"] = load_s;
    r["cold_unique"] = {{"documents", unique.size()}, {"bytes", unique_bytes}, {"tokens", cold_tokens},
                        {"seconds", cold_s}, {"mb_per_s", unique_bytes / 1e6 / cold_s},
                        {"tokens_per_s", cold_tokens / cold_s}};
    r["encode"] = {{"documents", docs.size()}, {"bytes", total_bytes}, {"tokens", tokens}, {"seconds", enc_s},
                   {"mb_per_s", total_bytes / 1e6 / enc_s}, {"tokens_per_s", tokens / enc_s}};
    r["decode"] = {{"tokens", tokens}, {"bytes", decoded_bytes}, {"seconds", dec_s},
                   {"mb_per_s", decoded_bytes / 1e6 / dec_s}, {"tokens_per_s", tokens / dec_s}};
    r["machine"] = {{"host", host}, {"cpu_model", cpu_model()},
                    {"logical_cpus", static_cast<long>(::sysconf(_SC_NPROCESSORS_ONLN))}};
    r["commit"] = command_output("git rev-parse HEAD 2>/dev/null");
    r["command"] = command;
    r["notes"] = "MB = 1e6 bytes of UTF-8 input; one thread; encode = HF encode(text, add_special_tokens=False) "
                 "semantics; the main pass repeats the corpus texts, so the word cache is warm after the first "
                 "repetition (cold_unique is the first pass over each distinct text on an empty cache)";
    const std::string dir = args["output-dir"].as<std::string>();
    rtp::make_directories(dir);
    const std::string out = dir + "/tokenizer-" + host + ".json";
    rtp::write_json_atomic(out, nlohmann::json::parse(r.dump()), 2);
    std::cout << r.dump(2) << "\nwrote " << out << "\n";
    return 0;
  });
}
