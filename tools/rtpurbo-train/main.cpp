// rtpurbo-train --recipe R [--key value ...] [--dump-config] [--resume]
// Every TrainConfig field (rtp/train/recipe.h) is a flag of the same name (snake_case or kebab-case); flags
// override the recipe, which overrides the defaults.
#include <algorithm>
#include <cxxopts.hpp>
#include <iostream>
#include <string>
#include <vector>

#include "main_guard.h"
#include "rtp/train/recipe.h"
#include "rtp/train/stages.h"

namespace {

int run(int argc, char** argv) {
  const auto& reg = rtp::train::train_config_registry();
  // kebab-case -> snake_case for registry keys (cxxopts knows only the snake_case names).
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a.size() <= 2) continue;
    const size_t eq = a.find('=');
    const std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (reg.find(name) && name.find('-') != std::string::npos)
      a = "--" + rtp::config::normalize_key(name) + (eq == std::string::npos ? "" : a.substr(eq));
  }
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());

  cxxopts::Options options("rtpurbo-train",
                           "Train: pretrain the toy model, or stage 1 (indexer) of RTPurbo.\n"
                           "Every config field below is also a recipe key; flags override the recipe.\n"
                           "Boolean fields are flags (--resume) or --key=false.");
  options.add_options()("recipe", "YAML recipe (keys are the fields below)", cxxopts::value<std::string>())(
      "dump-config", "print the merged config as YAML and exit")("h,help", "this help");
  for (const auto& f : reg.fields()) {
    const std::string help = rtp::str_cat(f.help, " [", f.expected(), "; default ",
                                          f.default_text.empty() ? "\"\"" : f.default_text, "]");
    auto value = cxxopts::value<std::string>();
    if (f.kind == rtp::config::Kind::Bool) value->implicit_value("true");
    options.add_option(f.group, "", {f.name}, help, value, f.kind == rtp::config::Kind::Bool ? "" : "V");
  }
  std::vector<std::string> groups = {""};
  for (const auto& f : reg.fields())
    if (std::find(groups.begin(), groups.end(), f.group) == groups.end()) groups.push_back(f.group);

  options.allow_unrecognised_options();
  const auto result = options.parse(static_cast<int>(cargv.size()), cargv.data());
  if (result.count("help")) {
    std::cout << options.help(groups) << std::endl;
    return 0;
  }
  for (const auto& u : result.unmatched()) {
    if (u.rfind("--", 0) == 0) {
      const std::string key = rtp::config::normalize_key(u.substr(2, u.find('=') - 2));
      RTP_THROW("command line: unknown option '", u, "'", rtp::config::did_you_mean(key, reg.names()),
                " (rtpurbo-train --help lists every key)");
    }
    RTP_THROW("command line: unexpected argument '", u, "' (options are --key value; see rtpurbo-train --help)");
  }
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const auto& kv : result.arguments())
    if (reg.find(kv.key())) overrides.emplace_back(kv.key(), kv.value());
  const std::string recipe = result.count("recipe") ? result["recipe"].as<std::string>() : "";
  const rtp::train::TrainConfig cfg = rtp::train::load_train_config(recipe, overrides);
  if (result.count("dump-config")) {
    std::cout << rtp::train::dump_config(cfg);
    return 0;
  }
  rtp::RunContext ctx = rtp::train::make_run_context(cfg);
  rtp::train::run_stage(cfg, ctx);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return rtp::tools::run_guarded("rtpurbo-train", [&] { return run(argc, argv); });
}
