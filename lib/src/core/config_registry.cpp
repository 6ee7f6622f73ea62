#include "rtp/core/config_registry.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

#include "rtp/core/file_io.h"

namespace rtp::config {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Int: return "integer";
    case Kind::Float: return "number";
    case Kind::Bool: return "boolean";
    case Kind::String: return "string";
  }
  return "?";
}

namespace {
std::string bound_text(double v, Kind kind) {
  if (kind == Kind::Int && std::fabs(v) < 9e15) return std::to_string(static_cast<int64_t>(v));
  return format_float(v);
}
}  // namespace

std::string Check::describe(Kind kind) const {
  if (kind == Kind::Bool) return "a boolean (true or false)";
  if (!choices.empty()) {
    std::string s = "one of ";
    for (size_t i = 0; i < choices.size(); ++i) s += (i ? ", " : "") + (choices[i].empty() ? "\"\"" : choices[i]);
    return s;
  }
  std::string s = kind == Kind::Int ? "an integer" : kind == Kind::Float ? "a number" : "a string";
  if (lo && hi) {
    s += str_cat(" in ", lo_open ? "(" : "[", bound_text(*lo, kind), ", ", bound_text(*hi, kind), hi_open ? ")" : "]");
  } else if (lo) {
    s += str_cat(lo_open ? " > " : " >= ", bound_text(*lo, kind));
  } else if (hi) {
    s += str_cat(hi_open ? " < " : " <= ", bound_text(*hi, kind));
  }
  return s;
}

bool Check::accepts_number(double v) const {
  if (std::isnan(v)) return false;
  if (lo && (lo_open ? !(v > *lo) : !(v >= *lo))) return false;
  if (hi && (hi_open ? !(v < *hi) : !(v <= *hi))) return false;
  return true;
}

bool Check::accepts_choice(const std::string& v) const {
  return choices.empty() || std::find(choices.begin(), choices.end(), v) != choices.end();
}

Check range(double lo, double hi, const char* bounds) {
  const std::string b = bounds ? bounds : "[]";
  RTP_CHECK(b.size() == 2 && (b[0] == '[' || b[0] == '(') && (b[1] == ']' || b[1] == ')'),
            "range bounds must be one of \"[]\", \"(]\", \"[)\", \"()\"; got \"", b, "\"");
  Check c;
  c.lo = lo;
  c.hi = hi;
  c.lo_open = b[0] == '(';
  c.hi_open = b[1] == ')';
  return c;
}
Check at_least(double lo) {
  Check c;
  c.lo = lo;
  return c;
}
Check above(double lo) {
  Check c;
  c.lo = lo;
  c.lo_open = true;
  return c;
}
Check one_of(std::initializer_list<const char*> choices) {
  Check c;
  for (const char* s : choices) c.choices.emplace_back(s);
  return c;
}

std::string origin_recipe(const std::string& path, int line) {
  return line > 0 ? str_cat("recipe '", path, "' line ", line) : str_cat("recipe '", path, "'");
}

namespace {
[[noreturn]] void bad_value(const std::string& key, const std::string& text, const std::string& expected,
                            const std::string& origin) {
  RTP_THROW(origin, ": key '", key, "': value '", text, "' is not valid: expected ", expected);
}
}  // namespace

int64_t parse_int(const std::string& key, const std::string& text, const Check& c, const std::string& origin) {
  int64_t v = 0;
  const char* b = text.data();
  const char* e = b + text.size();
  if (b != e && *b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || text.empty()) bad_value(key, text, c.describe(Kind::Int), origin);
  // Integer choices ("64", "128") are matched as the value's canonical text, so that "+64" is 64.
  const bool ok = c.choices.empty() ? c.accepts_number(static_cast<double>(v)) : c.accepts_choice(std::to_string(v));
  if (!ok) bad_value(key, text, c.describe(Kind::Int), origin);
  return v;
}

double parse_float(const std::string& key, const std::string& text, const Check& c, const std::string& origin) {
  if (text.empty()) bad_value(key, text, c.describe(Kind::Float), origin);
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v))
    bad_value(key, text, c.describe(Kind::Float), origin);
  if (!c.accepts_number(v)) bad_value(key, text, c.describe(Kind::Float), origin);
  return v;
}

bool parse_bool(const std::string& key, const std::string& text, const std::string& origin) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (t == "true" || t == "yes" || t == "on" || t == "1") return true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return false;
  bad_value(key, text, "a boolean (true or false)", origin);
}

std::string parse_string(const std::string& key, const std::string& text, const Check& c, const std::string& origin) {
  if (!c.accepts_choice(text)) bad_value(key, text, c.describe(Kind::String), origin);
  return text;
}

std::string format_float(double v) {
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  RTP_CHECK(ec == std::errc(), "cannot format ", v);
  std::string s(buf, p);
  // Keep it recognisably a number in YAML ("1" reads back fine either way; "1e-05" too).
  return s;
}

std::string normalize_key(const std::string& key) {
  std::string k = key;
  std::replace(k.begin(), k.end(), '-', '_');
  return k;
}

namespace {
std::vector<YamlEntry> entries_of(const YAML::Node& root, const std::string& name) {
  std::vector<YamlEntry> out;
  if (!root.IsDefined() || root.IsNull()) return out;
  RTP_CHECK(root.IsMap(), "recipe '", name, "': expected a mapping of keys to values at the top level, found a ",
            root.IsSequence() ? "sequence" : "scalar");
  std::set<std::string> seen;
  for (const auto& kv : root) {
    const int line = kv.first.Mark().line + 1;
    RTP_CHECK(kv.first.IsScalar(), origin_recipe(name, line), ": keys must be plain names");
    YamlEntry e;
    e.key = kv.first.Scalar();
    e.line = line;
    RTP_CHECK(seen.insert(normalize_key(e.key)).second, origin_recipe(name, line), ": key '", e.key,
              "' appears twice");
    const YAML::Node& v = kv.second;
    if (v.IsNull()) {
      e.is_null = true;
    } else if (v.IsScalar()) {
      e.text = v.Scalar();
    } else {
      RTP_THROW(origin_recipe(name, line), ": key '", e.key, "': expected a single value, found a ",
                v.IsMap() ? "mapping" : "sequence", " (recipes are flat: every key is a config field)");
    }
    out.push_back(std::move(e));
  }
  return out;
}
}  // namespace

std::vector<YamlEntry> read_flat_yaml_string(const std::string& text, const std::string& origin_name) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    RTP_THROW("recipe '", origin_name, "' line ", e.mark.line + 1, ": not valid YAML: ", e.msg);
  }
  return entries_of(root, origin_name);
}

std::vector<YamlEntry> read_flat_yaml_file(const std::string& path) {
  RTP_CHECK(file_exists(path), "recipe '", path, "' does not exist (or is not a regular file)");
  return read_flat_yaml_string(read_text_file(path), path);
}

namespace {
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}
}  // namespace

std::string did_you_mean(const std::string& key, const std::vector<std::string>& names) {
  size_t best = std::string::npos;
  std::vector<std::string> hits;
  for (const auto& n : names) {
    size_t d = edit_distance(key, n);
    // Also count "key is a piece of n" (seq -> seq_len) as close.
    if (key.size() >= 3 && n.find(key) != std::string::npos) d = std::min(d, size_t(2));
    if (d < best) {
      best = d;
      hits = {n};
    } else if (d == best) {
      hits.push_back(n);
    }
  }
  if (hits.empty() || best > std::max<size_t>(2, key.size() / 3)) return "";
  std::string s = " (did you mean ";
  for (size_t i = 0; i < hits.size() && i < 3; ++i) s += str_cat(i ? " or " : "", "'", hits[i], "'");
  return s + "?)";
}

std::string yaml_scalar(const std::string& text, Kind kind) {
  if (kind != Kind::String) return text;
  // Quote whenever the plain scalar could read back differently (empty, looks like a number/bool/null, or
  // contains YAML syntax); double-quoted style with escapes otherwise keeps the text exact.
  bool plain = !text.empty();
  static const char* kSpecial = ":#{}[],&*!|>'\"%@`";
  for (char ch : text)
    if (std::strchr(kSpecial, ch) || ch == '\n' || ch == '\t' || static_cast<unsigned char>(ch) < 0x20) plain = false;
  if (plain && (text.front() == ' ' || text.back() == ' ' || text.front() == '-' || text.front() == '?'))
    plain = false;
  if (plain) {
    std::string low = text;
    std::transform(low.begin(), low.end(), low.begin(), [](unsigned char ch) { return std::tolower(ch); });
    static const std::set<std::string> kReserved = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"};
    if (kReserved.count(low)) plain = false;
    char* end = nullptr;
    std::strtod(text.c_str(), &end);
    if (end == text.c_str() + text.size()) plain = false;  // numeric-looking
  }
  if (plain) return text;
  std::string q = "\"";
  for (char ch : text) {
    switch (ch) {
      case '"': q += "\\\""; break;
      case '\\': q += "\\\\"; break;
      case '\n': q += "\\n"; break;
      case '\t': q += "\\t"; break;
      default: q += ch;
    }
  }
  return q + "\"";
}

}  // namespace rtp::config
