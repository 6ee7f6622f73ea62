// The tools' strict command line (tools/common/tool_args.h): stray arguments, unknown options and numbers with
// trailing characters are UsageErrors naming the argument; well-formed values parse to what was written.
#include "tool_args.h"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <functional>

#include <string>
#include <vector>

namespace {

using rtp::tools::UsageError;

cxxopts::Options make_options() {
  cxxopts::Options o("tool", "test");
  o.add_options()("top-p", "a probability", cxxopts::value<std::string>()->default_value("0.9"))(
      "steps", "a count", cxxopts::value<std::string>())("name", "a string", cxxopts::value<std::string>())(
      "help", "help");
  return o;
}

cxxopts::ParseResult parse(cxxopts::Options& o, std::vector<std::string> args) {
  args.insert(args.begin(), "tool");
  std::vector<const char*> argv;
  for (auto& a : args) argv.push_back(a.c_str());
  return rtp::tools::parse_strict(o, static_cast<int>(argv.size()), argv.data());
}

std::string usage_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(ToolArgs, StrayArgumentsAndUnknownOptionsAreErrors) {
  auto o = make_options();
  const std::string stray = usage_error([&] { parse(o, {"--name", "a", "file.jsonl"}); });
  EXPECT_NE(stray.find("unexpected argument 'file.jsonl'"), std::string::npos) << stray;
  auto o2 = make_options();
  const std::string unknown = usage_error([&] { parse(o2, {"--top_q", "0.5"}); });
  EXPECT_NE(unknown.find("unknown option '--top_q'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("top-p"), std::string::npos) << "a did-you-mean naming the option: " << unknown;
  auto o3 = make_options();
  EXPECT_EQ(usage_error([&] { parse(o3, {"--help", "stray"}); }), "") << "--help is answered whatever follows";
}

TEST(ToolArgs, NumbersAreTheWholeArgumentAndInRange) {
  auto o = make_options();
  auto r = parse(o, {"--top-p", "0.25", "--steps", "12"});
  EXPECT_DOUBLE_EQ(rtp::tools::number_arg(r, "top-p", rtp::config::range(0, 1, "(]")), 0.25);
  EXPECT_EQ(rtp::tools::integer_arg(r, "steps", rtp::config::at_least(1)), 12);
  EXPECT_FALSE(rtp::tools::optional_number_arg(r, "name").has_value());
  for (const char* bad : {"0.15x", "1.5", "", "nan"}) {
    auto ob = make_options();
    auto rb = parse(ob, {"--top-p", bad});
    const std::string e = usage_error([&] { rtp::tools::number_arg(rb, "top-p", rtp::config::range(0, 1, "(]")); });
    EXPECT_NE(e.find(std::string("--top-p '") + bad + "' is not valid"), std::string::npos) << bad << ": " << e;
  }
  for (const char* bad : {"3.5", "12abc", "0"}) {
    auto ob = make_options();
    auto rb = parse(ob, {"--steps", bad});
    const std::string e = usage_error([&] { rtp::tools::integer_arg(rb, "steps", rtp::config::at_least(1)); });
    EXPECT_NE(e.find("--steps"), std::string::npos) << bad << ": " << e;
  }
}

TEST(ToolArgs, PositiveIntegerLists) {
  EXPECT_EQ(rtp::tools::positive_integer_list("lengths", "4096,32768"), (std::vector<int64_t>{4096, 32768}));
  EXPECT_EQ(rtp::tools::positive_integer_list("lengths", "7"), (std::vector<int64_t>{7}));
  for (const char* bad : {"", "4096,", ",4096", "4096,,8", "0", "-5", "+5", " 5", "12k", "1.5"}) {
    const std::string e = usage_error([&] { rtp::tools::positive_integer_list("lengths", bad); });
    EXPECT_NE(e.find(std::string("--lengths: expected comma-separated positive integers, found '") + bad + "'"),
              std::string::npos) << bad << ": " << e;
  }
}

TEST(ToolArgs, ChoiceLists) {
  const std::vector<std::string> valid = {"eager", "graphs", "greedy"};
  EXPECT_EQ(rtp::tools::choice_list("paths", "graphs,eager", valid), (std::vector<std::string>{"graphs", "eager"}));
  EXPECT_EQ(rtp::tools::choice_list("paths", "greedy", valid), (std::vector<std::string>{"greedy"}));
  for (const char* bad : {"", "graphs,", ",graphs", "graphs,,eager", "graph", "Graphs", " graphs"}) {
    const std::string e = usage_error([&] { rtp::tools::choice_list("paths", bad, valid); });
    EXPECT_NE(e.find("--paths: unknown item '"), std::string::npos) << bad << ": " << e;
    EXPECT_NE(e.find("valid: eager, graphs, greedy"), std::string::npos) << bad << ": " << e;
  }
}

TEST(ToolArgs, ChoicesRequiredFlagsAndLibraryParsedValues) {
  auto o = make_options();
  auto r = parse(o, {"--name", "median"});
  EXPECT_EQ(rtp::tools::choice_arg(r, "top-p", {"0.9", "1"}), "0.9");  // the default
  EXPECT_EQ(usage_error([&] { rtp::tools::choice_arg(r, "name", {"mean", "max"}); }),
            "--name 'median' is not valid: expected mean or max");
  EXPECT_EQ(usage_error([&] { rtp::tools::choice_arg(r, "name", {"a", "b", "c"}); }),
            "--name 'median' is not valid: expected a, b or c");
  EXPECT_EQ(rtp::tools::required_arg(r, "name"), "median");
  EXPECT_EQ(usage_error([&] { rtp::tools::required_arg(r, "steps", "(or steps in the recipe)"); }),
            "--steps is required (or steps in the recipe)");
  // A library parser's rtp::Error becomes a UsageError that names the flag and the value; its result passes through.
  const auto parse_even = [](const std::string& t) {
    RTP_CHECK(t == "2" || t == "4", "'", t, "' is not even");
    return std::stoi(t);
  };
  EXPECT_EQ(rtp::tools::flag_value("count", "4", parse_even), 4);
  EXPECT_EQ(usage_error([&] { rtp::tools::flag_value("count", "3", parse_even); }).rfind("--count '3': '3' is not even", 0),
            0u);
}

// An option read by some modes only: given to another mode it is refused, naming who reads it; a default does not
// count as given, and an option no entry lists is read by every mode.
TEST(ToolArgs, OptionsOfOtherModes) {
  const std::vector<rtp::tools::ModeOption> table{{"top-p", {"a"}, ""},
                                                  {"steps", {"a", "b", "c"}, ""},
                                                  {"name", {"b", "c"}, "mode a names nothing"}};
  auto o = make_options();
  auto r = parse(o, {"--name", "x"});
  EXPECT_NO_THROW(rtp::tools::reject_options_of_other_modes(r, "mode", "b", table));
  EXPECT_NO_THROW(rtp::tools::reject_options_of_other_modes(r, "mode", "d", {{"steps", {"a"}, ""}}));
  EXPECT_EQ(usage_error([&] { rtp::tools::reject_options_of_other_modes(r, "mode", "a", table); }),
            "--name is not read by --mode a, only by --mode b and c; mode a names nothing");
  auto o2 = make_options();
  auto r2 = parse(o2, {"--steps", "3", "--top-p", "0.5"});
  EXPECT_NO_THROW(rtp::tools::reject_options_of_other_modes(r2, "mode", "a", table));
  EXPECT_EQ(usage_error([&] { rtp::tools::reject_options_of_other_modes(r2, "mode", "c", table); }),
            "--top-p is not read by --mode c, only by --mode a");
  EXPECT_EQ(usage_error([&] { rtp::tools::reject_options_of_other_modes(r2, "mode", "d", table); }),
            "--top-p is not read by --mode d, only by --mode a");
}

}  // namespace
