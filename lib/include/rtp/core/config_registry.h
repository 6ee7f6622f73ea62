#pragma once
// A registry of a config struct's fields: name, type, default, help and validation (range or choices), and
// the machinery every tool shares on top of it: flat YAML recipes whose keys equal the field names, command-line
// overrides (`--key value`, snake_case or kebab-case), and dumping the merged config back as YAML.
//
// Why a registry and not hand-written parsing: one entry per field gives the recipe key, the CLI flag, the
// --help line, the --dump-config line and the validation at once, so they cannot drift apart. Errors name the
// key, the value, what was expected and where the value came from (recipe file and line, or the command line).
//
// Torch-free: lives in rtpurbo_core.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "rtp/core/error.h"

namespace rtp::config {

enum class Kind { Int, Float, Bool, String };
const char* kind_name(Kind k);  // "integer", "number", "boolean", "string"

// What a value must satisfy beyond its type: a numeric range (bounds open or closed) or a set of choices (strings, or
// integers written in decimal).
struct Check {
  std::optional<double> lo, hi;
  bool lo_open = false, hi_open = false;
  std::vector<std::string> choices;
  // "an integer in [1, 65536]", "a number in (0, 1]", "one of pretrain, indexer", "a string".
  std::string describe(Kind kind) const;
  bool accepts_number(double v) const;
  bool accepts_choice(const std::string& v) const;
};
inline Check any() { return {}; }
// bounds: "[]" closed (default), "(]", "[)", "()".
Check range(double lo, double hi, const char* bounds = "[]");
Check at_least(double lo);
Check above(double lo);
Check one_of(std::initializer_list<const char*> choices);

// Where a value came from, for error messages: "recipe 'r.yaml' line 3", "command line".
std::string origin_recipe(const std::string& path, int line);

// Parse a value's text as the field's type and check it; throw rtp::Error naming key, value, expectation, origin.
int64_t parse_int(const std::string& key, const std::string& text, const Check& c, const std::string& origin);
double parse_float(const std::string& key, const std::string& text, const Check& c, const std::string& origin);
bool parse_bool(const std::string& key, const std::string& text, const std::string& origin);
std::string parse_string(const std::string& key, const std::string& text, const Check& c, const std::string& origin);

// Canonical text of values: doubles as the shortest text that reads back to the same double.
std::string format_float(double v);
inline std::string format_int(int64_t v) { return std::to_string(v); }
inline std::string format_bool(bool v) { return v ? "true" : "false"; }

// "seq-len" -> "seq_len": CLI flags accept both spellings.
std::string normalize_key(const std::string& key);

// One key of a flat YAML mapping, as text.
struct YamlEntry {
  std::string key;
  std::string text;  // the scalar's text ("" for null)
  bool is_null = false;
  int line = 0;  // 1-based
};
// Reads a YAML file whose top level is a mapping of scalars (or empty). Nested mappings, sequences and duplicate
// keys are errors naming the file, line and key.
std::vector<YamlEntry> read_flat_yaml_file(const std::string& path);
std::vector<YamlEntry> read_flat_yaml_string(const std::string& text, const std::string& origin_name);

// The closest names to `key` by edit distance: " (did you mean 'seq_len'?)" or "".
std::string did_you_mean(const std::string& key, const std::vector<std::string>& names);

// A YAML scalar for `text` that reads back as exactly `text` (quoted only when needed).
std::string yaml_scalar(const std::string& text, Kind kind);

template <class Config>
struct Field {
  std::string group;  // section heading in --help and --dump-config
  std::string name;
  Kind kind = Kind::String;
  std::string help;
  Check check;
  std::string default_text;  // the value in a default-constructed Config
  std::function<std::string(const Config&)> get;
  std::function<void(Config&, const std::string& text, const std::string& origin)> set;

  std::string expected() const { return check.describe(kind); }
};

template <class Config>
class Registry {
 public:
  explicit Registry(std::string what = "config") : what_(std::move(what)) {}

  // One line per field: registry.add("optim", "lr", &TrainConfig::lr, range(0, 10, "(]"), "peak learning rate").
  template <class T>
  Registry& add(const std::string& group, const std::string& name, T Config::*member, Check check,
                const std::string& help) {
    Field<Config> f;
    f.group = group;
    f.name = name;
    f.help = help;
    f.check = check;
    if constexpr (std::is_same_v<T, bool>) {
      f.kind = Kind::Bool;
      f.get = [member](const Config& c) { return format_bool(c.*member); };
      f.set = [member, name](Config& c, const std::string& t, const std::string& o) {
        c.*member = parse_bool(name, t, o);
      };
    } else if constexpr (std::is_integral_v<T>) {
      f.kind = Kind::Int;
      f.get = [member](const Config& c) { return format_int(static_cast<int64_t>(c.*member)); };
      f.set = [member, name, check](Config& c, const std::string& t, const std::string& o) {
        c.*member = static_cast<T>(parse_int(name, t, check, o));
      };
    } else if constexpr (std::is_floating_point_v<T>) {
      f.kind = Kind::Float;
      f.get = [member](const Config& c) { return format_float(static_cast<double>(c.*member)); };
      f.set = [member, name, check](Config& c, const std::string& t, const std::string& o) {
        c.*member = static_cast<T>(parse_float(name, t, check, o));
      };
    } else {
      static_assert(std::is_same_v<T, std::string>, "config fields are bool, integers, floating point or string");
      f.kind = Kind::String;
      f.get = [member](const Config& c) { return c.*member; };
      f.set = [member, name, check](Config& c, const std::string& t, const std::string& o) {
        c.*member = parse_string(name, t, check, o);
      };
    }
    f.default_text = f.get(Config{});
    for (const auto& g : fields_)
      RTP_CHECK(g.name != name, what_, " registry: field '", name, "' registered twice");
    fields_.push_back(std::move(f));
    return *this;
  }

  const std::vector<Field<Config>>& fields() const { return fields_; }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& f : fields_) n.push_back(f.name);
    return n;
  }
  // Accepts kebab-case; nullptr if unknown.
  const Field<Config>* find(const std::string& key) const {
    const std::string k = normalize_key(key);
    for (const auto& f : fields_)
      if (f.name == k) return &f;
    return nullptr;
  }
  const Field<Config>& at(const std::string& key, const std::string& origin) const {
    const Field<Config>* f = find(key);
    if (!f) RTP_THROW(origin, ": unknown ", what_, " key '", key, "'", did_you_mean(normalize_key(key), names()));
    return *f;
  }

  void set(Config& c, const std::string& key, const std::string& text, const std::string& origin) const {
    at(key, origin).set(c, text, origin);
  }

  // Applies every key of a flat YAML recipe (later files override earlier ones when called repeatedly).
  void apply_yaml_file(Config& c, const std::string& path) const { apply_entries(c, read_flat_yaml_file(path), path); }
  void apply_yaml_string(Config& c, const std::string& text, const std::string& name) const {
    apply_entries(c, read_flat_yaml_string(text, name), name);
  }
  // Overrides (key, value) in order, e.g. from the command line.
  void apply_overrides(Config& c, const std::vector<std::pair<std::string, std::string>>& kv,
                       const std::string& origin = "command line") const {
    for (const auto& [k, v] : kv) set(c, k, v, str_cat(origin, " (--", k, ")"));
  }

  // The merged config as a YAML recipe that loads back to an equal config; help texts become comments.
  std::string to_yaml(const Config& c, bool with_help = true) const {
    std::string out, group;
    for (const auto& f : fields_) {
      if (with_help && f.group != group) {
        group = f.group;
        out += str_cat(out.empty() ? "" : "\n", "# --- ", group, " ---\n");
      }
      out += str_cat(f.name, ": ", yaml_scalar(f.get(c), f.kind));
      if (with_help && !f.help.empty()) out += str_cat("  # ", f.help);
      out += "\n";
    }
    return out;
  }

  bool equal(const Config& a, const Config& b) const {
    for (const auto& f : fields_)
      if (f.get(a) != f.get(b)) return false;
    return true;
  }
  // The names of fields whose values differ.
  std::vector<std::string> differences(const Config& a, const Config& b) const {
    std::vector<std::string> d;
    for (const auto& f : fields_)
      if (f.get(a) != f.get(b)) d.push_back(f.name);
    return d;
  }

 private:
  void apply_entries(Config& c, const std::vector<YamlEntry>& entries, const std::string& path) const {
    for (const auto& e : entries) {
      const std::string origin = origin_recipe(path, e.line);
      const Field<Config>& f = at(e.key, origin);
      RTP_CHECK(!(e.is_null && f.kind != Kind::String), origin, ": key '", e.key, "' has no value: expected ",
                f.expected());
      f.set(c, e.text, origin);
    }
  }

  std::string what_;
  std::vector<Field<Config>> fields_;
};

}  // namespace rtp::config
