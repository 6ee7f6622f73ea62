#pragma once
// Strict command lines for every tool, the way rtpurbo-train has always read its own: an argument that matches
// no option is an error (cxxopts alone collects stray positional arguments and lets them be ignored, so
// `rtpurbo-tokenize --tokenizer DIR file.jsonl` read stdin), an unknown option gets a "did you mean", and a
// number is the whole argument (cxxopts reads `0.15x` as 0.15) and within its range, checked when the command
// line is read rather than after minutes of work. Numeric options are declared as cxxopts::value<std::string>()
// and read through number_arg / integer_arg, which use the recipe parser (rtp/core/config_registry.h).
#include <algorithm>
#include <cctype>
#include <cxxopts.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "rtp/core/config_registry.h"
#include "rtp/core/error.h"
#include "main_guard.h"

namespace rtp::tools {

// Every long option name of `opts`, for "did you mean".
inline std::vector<std::string> option_names(const cxxopts::Options& opts) {
  std::vector<std::string> names;
  for (const auto& g : opts.groups())
    for (const auto& o : opts.group_help(g).options)
      for (const auto& l : o.l) names.push_back(l);
  return names;
}

// Throws UsageError for the first argument no option took: an unknown --option (with the closest known name
// among `names`) or a stray positional argument.
inline void reject_unmatched(const cxxopts::ParseResult& result, const std::vector<std::string>& names) {
  for (const auto& u : result.unmatched()) {
    if (u.rfind("-", 0) == 0 && u.size() > 1) {
      const std::string name = u.substr(u.find_first_not_of('-'), u.find('=') - u.find_first_not_of('-'));
      std::string hint = rtp::config::did_you_mean(name, names);
      // did_you_mean compares the spelling it is given; tools' options are kebab-case.
      if (hint.empty()) hint = rtp::config::did_you_mean(rtp::config::normalize_key(name), names);
      throw UsageError(rtp::str_cat("unknown option '", u, "'", hint));
    }
    throw UsageError(rtp::str_cat("unexpected argument '", u,
                                  "': every input is given by an option (--name value), none is positional"));
  }
}

// opts.parse() with unknown options and stray arguments as errors (see reject_unmatched).
inline cxxopts::ParseResult parse_strict(cxxopts::Options& opts, int argc, const char* const* argv) {
  opts.allow_unrecognised_options();
  auto result = opts.parse(argc, argv);
  if (!result.count("help")) reject_unmatched(result, option_names(opts));
  return result;
}

namespace detail {
// "--top-p '0.9x' is not valid: expected a number in (0, 1]": the recipe parser's checks, the option's name.
template <class F>
auto parse_or_usage(const std::string& name, const std::string& text, const rtp::config::Check& check,
                    rtp::config::Kind kind, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const rtp::Error&) {
    throw UsageError(rtp::str_cat("--", name, " '", text, "' is not valid: expected ", check.describe(kind)));
  }
}
}  // namespace detail

// The value of --name (declared as a string option) as a number: the whole text, within `check`.
inline double number_arg(const cxxopts::ParseResult& r, const std::string& name,
                         const rtp::config::Check& check = rtp::config::any()) {
  const std::string text = r[name].as<std::string>();
  return detail::parse_or_usage(name, text, check, rtp::config::Kind::Float,
                                [&] { return rtp::config::parse_float(name, text, check, "command line"); });
}
inline int64_t integer_arg(const cxxopts::ParseResult& r, const std::string& name,
                           const rtp::config::Check& check = rtp::config::any()) {
  const std::string text = r[name].as<std::string>();
  return detail::parse_or_usage(name, text, check, rtp::config::Kind::Int,
                                [&] { return rtp::config::parse_int(name, text, check, "command line"); });
}
// `text`, the value of --name, as comma-separated positive integers ("4096,32768"); anything else is a usage error.
inline std::vector<int64_t> positive_integer_list(const std::string& name, const std::string& text) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v <= 0 || !std::isdigit(static_cast<unsigned char>(item[0])))
      throw UsageError("--" + name + ": expected comma-separated positive integers, found '" + text + "'");
    out.push_back(v);
    start = end + 1;
  }
  return out;
}

// `text`, the value of --name, as comma-separated items each one of `valid` ("eager,graphs"); an unknown or empty item
// is a usage error listing the valid ones.
inline std::vector<std::string> choice_list(const std::string& name, const std::string& text,
                                            const std::vector<std::string>& valid) {
  std::string listed;
  for (const auto& v : valid) listed += (listed.empty() ? "" : ", ") + v;
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    if (std::find(valid.begin(), valid.end(), item) == valid.end())
      throw UsageError("--" + name + ": unknown item '" + item + "' in '" + text + "'; valid: " + listed);
    out.push_back(item);
    start = end + 1;
  }
  return out;
}

// Unset (no default and not given): nullopt.
inline std::optional<double> optional_number_arg(const cxxopts::ParseResult& r, const std::string& name,
                                                 const rtp::config::Check& check = rtp::config::any()) {
  if (!r.count(name)) return std::nullopt;
  return number_arg(r, name, check);
}
inline std::optional<int64_t> optional_integer_arg(const cxxopts::ParseResult& r, const std::string& name,
                                                   const rtp::config::Check& check = rtp::config::any()) {
  if (!r.count(name)) return std::nullopt;
  return integer_arg(r, name, check);
}

// A string option whose value must be one of `valid`: "--aggregation 'median' is not valid: expected max or mean".
inline std::string choice_arg(const cxxopts::ParseResult& r, const std::string& name,
                              const std::vector<std::string>& valid) {
  const std::string text = r[name].as<std::string>();
  if (std::find(valid.begin(), valid.end(), text) != valid.end()) return text;
  std::string listed;
  for (size_t i = 0; i < valid.size(); ++i)
    listed += (i == 0 ? "" : i + 1 == valid.size() ? " or " : ", ") + valid[i];
  throw UsageError("--" + name + " '" + text + "' is not valid: expected " + listed);
}

// The value of a required option; its absence is a usage error ("--model is required", then `hint`).
inline std::string required_arg(const cxxopts::ParseResult& r, const std::string& name, const std::string& hint = "") {
  if (!r.count(name)) throw UsageError("--" + name + " is required" + (hint.empty() ? "" : " " + hint));
  return r[name].as<std::string>();
}

// `text`, the value of --name, read by a library parser that throws rtp::Error for what it does not accept (e.g.
// rtp::parse_dtype): that error becomes a UsageError naming the flag, "--dtype 'int8': unknown dtype 'int8': ...".
template <class F>
auto flag_value(const std::string& name, const std::string& text, F&& parse) -> decltype(parse(text)) {
  try {
    return parse(text);
  } catch (const rtp::Error& e) {
    throw UsageError(rtp::str_cat("--", name, " '", text, "': ", e.what()));
  }
}

// An option that only some modes of a tool read (rtpurbo-eval's --task logits / toy / ruler): `modes` lists them,
// `hint` (may be empty) says what the other modes take instead.
struct ModeOption {
  std::string name;
  std::vector<std::string> modes;
  std::string hint;
};

// Throws UsageError for the first option given on the command line that `mode` does not read: ignoring it would
// leave the user looking for output that was never written (`--task toy --out F` writes to --out-dir). Options not
// listed are read by every mode; defaults do not count as given.
inline void reject_options_of_other_modes(const cxxopts::ParseResult& r, const std::string& mode_flag,
                                          const std::string& mode, const std::vector<ModeOption>& options) {
  for (const auto& o : options) {
    if (!r.count(o.name) || std::find(o.modes.begin(), o.modes.end(), mode) != o.modes.end()) continue;
    std::string readers;
    for (size_t i = 0; i < o.modes.size(); ++i)
      readers += (i == 0 ? "" : i + 1 == o.modes.size() ? " and " : ", ") + o.modes[i];
    throw UsageError(rtp::str_cat("--", o.name, " is not read by --", mode_flag, " ", mode, ", only by --", mode_flag,
                                  " ", readers, o.hint.empty() ? "" : "; " + o.hint));
  }
}

}  // namespace rtp::tools
