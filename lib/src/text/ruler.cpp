#include "rtp/text/ruler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <utility>

#include "rtp/core/error.h"

namespace rtp::text::ruler {

namespace {

// Portable draws: the same (seed, index) gives the same sample with every standard library.
struct Rng {
  explicit Rng(uint64_t seed) : g(seed) {}
  uint64_t below(uint64_t n) { return static_cast<uint64_t>(static_cast<double>(g() >> 11) * (1.0 / 9007199254740992.0) * n); }
  std::mt19937_64 g;
};

uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t task_seed(const std::string& task, uint64_t seed, int64_t index) {
  uint64_t h = 1469598103934665603ULL;
  for (char c : task) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return mix(mix(seed ^ h) + static_cast<uint64_t>(index));
}


// The noise haystack in single sentences (cycled), so that the fitted size moves in steps of a few tokens.
std::vector<std::string> noise_units(int64_t n) {
  static const std::vector<std::string> sentences = {"The grass is green.", "The sky is blue.", "The sun is yellow.",
                                                     "Here we go.", "There and back again."};
  std::vector<std::string> u;
  for (int64_t i = 0; i < n; ++i) u.push_back(sentences[i % sentences.size()]);
  return u;
}

// Our own small lists: adjective-noun keys only need to be distinct and word-like.
const std::vector<std::string> kAdjectives = {
    "amber", "ancient", "bitter", "bold", "brave", "brisk", "calm", "clever", "cold", "crimson", "curious", "damp",
    "eager", "early", "faint", "fancy", "fierce", "gentle", "gloomy", "golden", "grand", "hollow", "humble", "icy",
    "jolly", "keen", "lively", "lonely", "lucky", "mellow", "misty", "noble", "odd", "pale", "plain", "polite",
    "proud", "quiet", "rapid", "rare", "rough", "rusty", "sharp", "shiny", "silent", "silver", "sleepy", "slow",
    "smooth", "soft", "solid", "sour", "steady", "stormy", "sturdy", "sunny", "swift", "tender", "tidy", "tiny",
    "vivid", "warm", "wild", "witty"};
const std::vector<std::string> kNouns = {
    "anchor", "apple", "arrow", "badge", "basket", "beacon", "blanket", "bottle", "bridge", "bucket", "candle",
    "canyon", "castle", "cedar", "comet", "compass", "cottage", "crystal", "desert", "dragon", "engine", "falcon",
    "feather", "forest", "fountain", "garden", "glacier", "hammer", "harbor", "helmet", "island", "jacket", "kettle",
    "ladder", "lantern", "meadow", "mirror", "monkey", "mountain", "needle", "orchard", "otter", "pebble", "pencil",
    "pillow", "planet", "pocket", "puzzle", "rabbit", "ribbon", "river", "saddle", "shadow", "spider", "statue",
    "teapot", "thunder", "tiger", "tunnel", "valley", "violin", "wagon", "window", "wizard"};

std::string word_key(Rng& r) { return kAdjectives[r.below(kAdjectives.size())] + "-" + kNouns[r.below(kNouns.size())]; }
std::string number7(Rng& r) { return std::to_string(1000000 + r.below(9000000)); }
std::string uuid4(Rng& r) {
  const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 32; ++i) {
    char c = hex[r.below(16)];
    if (i == 12) c = '4';
    if (i == 16) c = hex[8 + r.below(4)];
    s += c;
    if (i == 7 || i == 11 || i == 15 || i == 19) s += '-';
  }
  return s;
}
// Pronounceable synthetic words (consonant-vowel syllables): an unbounded pool for the word-counting tasks.
std::string syllable_word(Rng& r, int letters) {
  const char* cons = "bcdfghjklmnprstvwz";
  const char* vow = "aeiou";
  std::string s;
  for (int i = 0; i < letters; ++i) s += (i % 2 == 0) ? cons[r.below(18)] : vow[r.below(5)];
  return s;
}
std::vector<std::string> distinct_words(Rng& r, int64_t count, int letters) {
  std::set<std::string> seen;
  std::vector<std::string> out;
  while (static_cast<int64_t>(out.size()) < count)
    if (auto w = syllable_word(r, letters); seen.insert(w).second) out.push_back(w);
  return out;
}

template <typename T>
void shuffle(std::vector<T>& v, Rng& r) {
  for (int64_t i = static_cast<int64_t>(v.size()) - 1; i > 0; --i) std::swap(v[i], v[r.below(i + 1)]);
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? sep : "") + parts[i];
  return s;
}
std::string join_and(const std::vector<std::string>& parts) {
  if (parts.size() <= 1) return join(parts, "");
  return join(std::vector<std::string>(parts.begin(), parts.end() - 1), ", ") + ", and " + parts.back();
}

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
}

enum class Hay { NOISE, ESSAY, NEEDLE };
enum class Kind { WORD, NUMBER, UUID };
struct NiahSpec {
  Hay hay;
  Kind key, value;
  int k, v, q;
};
const std::map<std::string, NiahSpec>& niah_specs() {
  static const std::map<std::string, NiahSpec> m = {
      {"niah_single_1", {Hay::NOISE, Kind::WORD, Kind::NUMBER, 1, 1, 1}},
      {"niah_single_2", {Hay::ESSAY, Kind::WORD, Kind::NUMBER, 1, 1, 1}},
      {"niah_single_3", {Hay::ESSAY, Kind::WORD, Kind::UUID, 1, 1, 1}},
      {"niah_multikey_1", {Hay::ESSAY, Kind::WORD, Kind::NUMBER, 4, 1, 1}},
      {"niah_multikey_2", {Hay::NEEDLE, Kind::WORD, Kind::NUMBER, 1, 1, 1}},
      {"niah_multikey_3", {Hay::NEEDLE, Kind::UUID, Kind::UUID, 1, 1, 1}},
      {"niah_multivalue", {Hay::ESSAY, Kind::WORD, Kind::NUMBER, 1, 4, 1}},
      {"niah_multiquery", {Hay::ESSAY, Kind::WORD, Kind::NUMBER, 4, 1, 4}},
  };
  return m;
}

std::string draw(Kind k, Rng& r) { return k == Kind::WORD ? word_key(r) : k == Kind::NUMBER ? number7(r) : uuid4(r); }

struct Built {
  std::string prompt;
  std::vector<std::string> answers;
};
// Builds the task with haystack size n (the fitted quantity) and `pad` one-token fillers after the context.
using Builder = std::function<Built(int64_t n, int64_t pad)>;

// One-token fillers placed at the start of the context ("a a a " before its first word): after a line break
// each adds exactly one token, where a filler at the end could split a ".\n" token in two.
std::string padding(int64_t pad) {
  std::string s;
  for (int64_t i = 0; i < pad; ++i) s += "a ";
  return s;
}

// Inserts `items` into `units` at random gaps (order of items kept when `ordered`).
std::vector<std::string> insert_at_random(std::vector<std::string> units, const std::vector<std::string>& items, Rng& r,
                                          bool ordered) {
  std::vector<int64_t> slots;
  for (size_t i = 0; i < items.size(); ++i) slots.push_back(static_cast<int64_t>(r.below(units.size() + 1)));
  if (ordered) std::sort(slots.begin(), slots.end());
  for (int64_t i = static_cast<int64_t>(items.size()) - 1; i >= 0; --i) {
    if (!ordered) {
      units.insert(units.begin() + std::min<int64_t>(slots[i], units.size()), items[i]);
    } else {
      units.insert(units.begin() + slots[i], items[i]);
    }
  }
  return units;
}

Builder niah_builder(const std::string& task, const NiahSpec& s, const RulerOptions& o, uint64_t seed) {
  const auto essay = split_words(o.essay_text);
  return [=](int64_t n, int64_t pad) {
    Rng r(seed);
    const int nkeys = std::max(s.k, s.q);
    std::vector<std::string> keys;
    while (static_cast<int>(keys.size()) < nkeys)
      if (auto k = draw(s.key, r); std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
    std::vector<std::vector<std::string>> values(nkeys);
    const std::string type_v = s.value == Kind::NUMBER ? "numbers" : s.value == Kind::UUID ? "uuids" : "words";
    const std::string type_v1 = s.value == Kind::NUMBER ? "number" : s.value == Kind::UUID ? "uuid" : "word";
    std::vector<std::string> needles;
    for (int i = 0; i < nkeys; ++i)
      for (int j = 0; j < s.v; ++j) {
        values[i].push_back(draw(s.value, r));
        needles.push_back("One of the special magic " + type_v + " for " + keys[i] + " is: " + values[i].back() + ".");
      }
    shuffle(needles, r);
    std::vector<std::string> queried(keys.begin(), keys.begin() + s.q);
    std::vector<std::string> answers;
    for (int i = 0; i < s.q; ++i) answers.insert(answers.end(), values[i].begin(), values[i].end());
    std::vector<std::string> units;
    if (s.hay == Hay::NOISE) {
      units = insert_at_random(noise_units(n), needles, r, false);
    } else if (s.hay == Hay::NEEDLE) {
      // Distractors never take a needle's key: a queried key must have only its own values in the text.
      for (int64_t i = 0; i < n; ++i) {
        std::string key = draw(s.key, r);
        while (std::find(keys.begin(), keys.end(), key) != keys.end()) key = draw(s.key, r);
        units.push_back("One of the special magic " + type_v + " for " + key + " is: " + draw(s.value, r) + ".");
      }
      units = insert_at_random(units, needles, r, false);
    } else {
      // Essay words, cycled to n; needles go in at depths from 40 evenly spaced points, after a sentence end.
      for (int64_t i = 0; i < n; ++i) units.push_back(essay[i % essay.size()]);
      std::vector<std::pair<int64_t, std::string>> at;
      for (const auto& needle : needles) {
        int64_t p = static_cast<int64_t>(std::llround(static_cast<double>(r.below(40)) / 39.0 * n));
        while (p > 0 && units[p - 1].back() != '.') --p;
        at.emplace_back(p, needle);
      }
      // Deepest first: an insertion then moves no point still to be used off its sentence end.
      std::stable_sort(at.begin(), at.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      for (const auto& [p, needle] : at) units.insert(units.begin() + p, needle);
    }
    const std::string context = padding(pad) + join(units, " ");
    const bool one = answers.size() == 1;
    const std::string query = join_and(queried);
    Built b;
    b.prompt = "Some special magic " + type_v + " are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the " + type_v + " afterwards.\n" + context + "\n" +
               (one ? "What is the special magic " + type_v1 + " for " + query + " mentioned in the provided text?"
                    : "What are all the special magic " + type_v + " for " + query + " mentioned in the provided text?") +
               (one ? " The special magic " + type_v1 + " for " + query + " mentioned in the provided text is"
                    : " The special magic " + type_v + " for " + query + " mentioned in the provided text are");
    b.answers = answers;
    return b;
  };
}

Builder vt_builder(uint64_t seed) {
  return [=](int64_t n, int64_t pad) {
    Rng r(seed);
    std::vector<std::string> names;
    while (names.size() < 5) {
      std::string v;
      for (int i = 0; i < 5; ++i) v += static_cast<char>('A' + r.below(26));
      if (std::find(names.begin(), names.end(), v) == names.end()) names.push_back(v);
    }
    const std::string value = std::to_string(10000 + r.below(90000));
    std::vector<std::string> chain{"VAR " + names[0] + " = " + value + "."};
    for (int i = 1; i < 5; ++i) chain.push_back("VAR " + names[i] + " = VAR " + names[i - 1] + ".");
    auto units = insert_at_random(noise_units(n), chain, r, true);
    Built b;
    b.prompt = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n" +
               padding(pad) + join(units, " ") + "\nQuestion: Find all variables that are assigned the value " + value +
               " in the text above. Answer: According to the chain(s) of variable assignment in the text above, 5 "
               "variables are assigned the value " + value + ", they are:";
    b.answers = names;
    return b;
  };
}

Builder cwe_builder(uint64_t seed, int64_t max_len) {
  const int common_freq = max_len < 4096 ? 6 : 30, rare_freq = max_len < 4096 ? 1 : 3;
  return [=](int64_t n, int64_t pad) {
    Rng r(seed);
    auto words = distinct_words(r, 10 + n, 6);
    std::vector<std::string> list;
    for (int i = 0; i < 10; ++i)
      for (int c = 0; c < common_freq; ++c) list.push_back(words[i]);
    for (int64_t i = 10; i < 10 + n; ++i)
      for (int c = 0; c < rare_freq; ++c) list.push_back(words[i]);
    shuffle(list, r);
    std::string context;
    for (size_t i = 0; i < list.size(); ++i) context += (i ? " " : "") + std::to_string(i + 1) + ". " + list[i];
    Built b;
    b.prompt = "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
               "ones that appear most often.\n" + padding(pad) + context +
               "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear "
               "most often in the list are:";
    b.answers.assign(words.begin(), words.begin() + 10);
    return b;
  };
}

Builder fwe_builder(uint64_t seed, int64_t max_len) {
  return [=](int64_t n, int64_t pad) {
    Rng r(seed);
    const int64_t vocab = std::max<int64_t>(8, max_len / 50);
    auto words = distinct_words(r, vocab, 6);
    words[0] = "....";  // rank 1 is noise, as in RULER
    const double zeta2 = M_PI * M_PI / 6.0;
    std::vector<std::string> text;
    for (int64_t k = 1; k <= vocab; ++k) {
      const int64_t count = static_cast<int64_t>(std::floor(static_cast<double>(n) / (k * k) / zeta2));
      for (int64_t c = 0; c < count; ++c) text.push_back(words[k - 1]);
    }
    shuffle(text, r);
    Built b;
    b.prompt = "Read the following coded text and track the frequency of each coded word. Find the three most "
               "frequently appeared coded words. " + padding(pad) + join(text, " ") +
               "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
               "frequently appeared words in the above coded text? Answer: According to the coded text above, the "
               "three most frequently appeared words are:";
    b.answers = {words[1], words[2], words[3]};
    return b;
  };
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"niah_single_1",   "niah_single_2",   "niah_single_3",
                                                 "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
                                                 "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"};
  return names;
}

bool task_needs_essay(const std::string& task) {
  auto it = niah_specs().find(task);
  return it != niah_specs().end() && it->second.hay == Hay::ESSAY;
}

namespace {

// A task at one (seed, index): its prompt builder, what it generates and the smallest haystack it takes.
struct TaskPlan {
  Builder build;
  int64_t tokens_to_generate = 0;
  int64_t n_min = 1;
};

TaskPlan plan_task(const std::string& task, const RulerOptions& o, int64_t index) {
  const auto& names = task_names();
  RTP_CHECK(std::find(names.begin(), names.end(), task) != names.end(), "unknown RULER task '", task,
            "': expected one of ", join(names, ", "));
  RTP_CHECK(!task_needs_essay(task) || !split_words(o.essay_text).empty(), "RULER task '", task,
            "' needs an essay haystack: give a plain-text file (e.g. --essay essays.txt)");
  const uint64_t seed = task_seed(task, o.seed, index);
  TaskPlan p;
  if (auto it = niah_specs().find(task); it != niah_specs().end()) {
    p.build = niah_builder(task, it->second, o, seed);
    p.tokens_to_generate = 128;
  } else if (task == "vt") {
    p.build = vt_builder(seed);
    p.tokens_to_generate = 30;
  } else if (task == "cwe") {
    p.build = cwe_builder(seed, o.max_seq_length);
    p.tokens_to_generate = 120;
  } else {
    p.build = fwe_builder(seed, o.max_seq_length);
    p.tokens_to_generate = 50;
    p.n_min = 40;
  }
  return p;
}

int64_t prompt_tokens(const Tokenizer& tok, const Builder& build, int64_t n, int64_t pad) {
  return static_cast<int64_t>(tok.encode(build(n, pad).prompt, false).size());
}

void require_smallest_fits(const std::string& task, const Tokenizer& tok, const RulerOptions& o, const TaskPlan& p) {
  const int64_t smallest = prompt_tokens(tok, p.build, p.n_min, 0);
  RTP_CHECK(smallest + p.tokens_to_generate <= o.max_seq_length, "RULER task '", task, "' does not fit max_seq_length ",
            o.max_seq_length, ": its smallest prompt has ", smallest, " tokens plus ", p.tokens_to_generate,
            " to generate");
}

}  // namespace

void require_fits(const std::string& task, const Tokenizer& tok, const RulerOptions& o) {
  require_smallest_fits(task, tok, o, plan_task(task, o, 0));
}

RulerSample generate_sample(const std::string& task, const Tokenizer& tok, const RulerOptions& o, int64_t index) {
  const TaskPlan plan = plan_task(task, o, index);
  const Builder& build = plan.build;
  RulerSample s;
  s.task = task;
  s.index = index;
  s.metric = "string_match_all";
  s.tokens_to_generate = plan.tokens_to_generate;
  const int64_t target = o.max_seq_length - s.tokens_to_generate;
  auto count = [&](int64_t n, int64_t pad) { return prompt_tokens(tok, build, n, pad); };
  const int64_t n_min = plan.n_min;
  require_smallest_fits(task, tok, o, plan);
  // The largest haystack that fits (doubling, then bisection), then one-token fillers close the gap exactly.
  int64_t lo = n_min, hi = n_min * 2;
  while (count(hi, 0) <= target) lo = hi, hi *= 2;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (count(mid, 0) <= target ? lo : hi) = mid;
  }
  // The first filler can change how the context's first word tokenizes, so try a few sizes below the largest.
  int64_t pad = -1;
  for (int64_t n = lo; n >= n_min && n > lo - 4 && pad < 0; --n) {
    for (int64_t p = target - count(n, 0), attempt = 0; p >= 0 && attempt < 4; ++attempt) {
      const int64_t got = count(n, p);
      if (got == target) {
        pad = p, lo = n;
        break;
      }
      p += target - got;
    }
  }
  RTP_CHECK(pad >= 0, "RULER task '", task, "': cannot reach exactly ", target, " prompt tokens");
  Built b = build(lo, pad);
  s.prompt = b.prompt;
  s.answers = b.answers;
  s.prompt_ids = tok.encode(s.prompt, false);
  RTP_CHECK(static_cast<int64_t>(s.prompt_ids.size()) == target, "RULER task '", task, "': prompt has ",
            s.prompt_ids.size(), " tokens, expected exactly ", target);
  return s;
}

double string_match_all(const std::string& prediction, const std::vector<std::string>& references) {
  if (references.empty()) return 0.0;
  const std::string p = lower(prediction);
  double hit = 0;
  for (const auto& r : references) hit += p.find(lower(r)) != std::string::npos ? 1.0 : 0.0;
  return hit / static_cast<double>(references.size());
}

double string_match_part(const std::string& prediction, const std::vector<std::string>& references) {
  const std::string p = lower(prediction);
  double best = 0;
  for (const auto& r : references) best = std::max(best, p.find(lower(r)) != std::string::npos ? 1.0 : 0.0);
  return best;
}

double score(const RulerSample& s, const std::string& prediction) {
  return s.metric == "string_match_part" ? string_match_part(prediction, s.answers) : string_match_all(prediction, s.answers);
}

}  // namespace rtp::text::ruler
