#include "rtp/data/toy_task.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "rtp/core/error.h"

namespace rtp::data {

namespace {

// A uniform integer in [0, n) from the 53 top bits: the same on every standard library.
int64_t uniform_int(std::mt19937_64& rng, int64_t n) {
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
  const int64_t v = static_cast<int64_t>(u * static_cast<double>(n));
  return std::min(v, n - 1);
}
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0); }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// n^k, saturating at 2^62.
int64_t saturating_pow(int64_t n, int64_t k) {
  int64_t r = 1;
  for (int64_t i = 0; i < k; ++i) {
    if (r > (int64_t{1} << 62) / std::max<int64_t>(n, 1)) return int64_t{1} << 62;
    r *= n;
  }
  return r;
}

}  // namespace

uint64_t sample_seed(uint64_t seed, uint64_t stream, uint64_t index) {
  return splitmix64(splitmix64(splitmix64(seed) ^ (stream * 0xD1B54A32D192ED03ULL)) ^ index);
}

int64_t ToyTaskConfig::min_seq_len() const {
  return 1 + num_needles * needle_len() + num_queries * query_len() + num_spans * 2 * span_len + 16;
}

void ToyTaskConfig::validate(const std::string& origin) const {
  const std::string where = str_cat(origin, ": toy task: ");
  RTP_CHECK(num_filler >= 2 && num_keys >= 2 && num_values >= 2, where,
            "toy_num_filler, toy_num_keys and toy_num_values must each be >= 2; got ", num_filler, ", ", num_keys,
            ", ", num_values);
  const int64_t needed = kNumSpecial + num_filler + num_keys + num_values;
  RTP_CHECK(vocab_size >= needed, where, "vocab_size (", vocab_size, ") is too small for ", kNumSpecial,
            " special + toy_num_filler (", num_filler, ") + toy_num_keys (", num_keys, ") + toy_num_values (",
            num_values, ") = ", needed, " token ids");
  RTP_CHECK(key_len >= 1 && value_len >= 1, where, "toy_key_len and toy_value_len must be >= 1");
  RTP_CHECK(num_needles >= 1, where, "toy_needles must be >= 1; got ", num_needles);
  RTP_CHECK(num_queries >= 1 && num_queries <= num_needles, where, "toy_queries (", num_queries,
            ") must be in [1, toy_needles (", num_needles, ")]: each query asks a different needle");
  RTP_CHECK(saturating_pow(num_keys, key_len) >= 2 * num_needles, where, "toy_num_keys^toy_key_len (", num_keys, "^",
            key_len, ") must be >= 2 * toy_needles (", 2 * num_needles, ") so that every needle gets a distinct key");
  RTP_CHECK(saturating_pow(num_values, value_len) >= 2 * num_needles, where, "toy_num_values^toy_value_len (",
            num_values, "^", value_len, ") must be >= 2 * toy_needles (", 2 * num_needles, ")");
  RTP_CHECK(num_spans >= 0 && (num_spans == 0 || span_len >= 2), where, "toy_span_len must be >= 2; got ", span_len);
  RTP_CHECK(markov_branching >= 0, where, "toy_markov_branching must be >= 0 (0: uniform haystack); got ",
            markov_branching);
  RTP_CHECK(markov_lag >= 1, where, "toy_markov_lag must be >= 1; got ", markov_lag);
}

ToyTask::ToyTask(const ToyTaskConfig& config) : config_(config) {
  config_.validate("ToyTask");
  std::mt19937_64 rng(splitmix64(config_.world_seed ^ 0x70794D4F444C31ULL));
  const int64_t F = config_.num_filler;
  next_.resize(static_cast<size_t>(F));
  cdf_.resize(static_cast<size_t>(F));
  for (int64_t t = 0; t < F; ++t) {
    auto& nx = next_[static_cast<size_t>(t)];
    auto& cdf = cdf_[static_cast<size_t>(t)];
    double total = 0;
    for (int64_t j = 0; j < config_.markov_branching; ++j) {
      nx.push_back(config_.filler_begin() + uniform_int(rng, F));
      // Exponential weights: a Dirichlet(1) distribution over the successors, so the chain has some
      // near-deterministic transitions (easy to learn) and some uncertain ones.
      const double w = -std::log(1.0 - uniform01(rng));
      total += w;
      cdf.push_back(total);
    }
    for (double& c : cdf) c /= total;
    if (!cdf.empty()) cdf.back() = 1.0;  // branching 0 (uniform haystack) has no chain
  }
}

const std::vector<int64_t>& ToyTask::successors(int64_t filler_token) const {
  const int64_t i = filler_token - config_.filler_begin();
  RTP_CHECK(i >= 0 && i < config_.num_filler, "token ", filler_token, " is not a filler token");
  return next_[static_cast<size_t>(i)];
}
const std::vector<double>& ToyTask::successor_cdf(int64_t filler_token) const {
  const int64_t i = filler_token - config_.filler_begin();
  RTP_CHECK(i >= 0 && i < config_.num_filler, "token ", filler_token, " is not a filler token");
  return cdf_[static_cast<size_t>(i)];
}

std::string ToyTask::describe() const {
  const auto& c = config_;
  return str_cat("toy task: vocab ", c.vocab_size, " (filler ", c.num_filler, ", keys ", c.num_keys, ", values ",
                 c.num_values, "), ", c.num_needles, " needles (key ", c.key_len, " + value ", c.value_len,
                 " tokens), ", c.num_queries, " queries, ", c.num_spans, " spans of ", c.span_len,
                 ", Markov branching ", c.markov_branching,
                 c.markov_lag > 1 ? str_cat(" at lag ", c.markov_lag) : std::string(),
                 c.random_spans ? ", random-token spans" : "", ", world seed ", c.world_seed);
}

ToySample ToyTask::generate(int64_t seq_len, uint64_t seed) const {
  const auto& c = config_;
  RTP_CHECK(seq_len >= c.min_seq_len(), "toy task: seq_len ", seq_len, " is too short for ", c.num_needles,
            " needles, ", c.num_queries, " queries and ", c.num_spans, " spans of ", c.span_len,
            " (needs at least ", c.min_seq_len(), ")");
  std::mt19937_64 rng(seed);
  const int64_t body_len = seq_len - 1 - c.num_queries * c.query_len();
  const int64_t filler_len = body_len - c.num_needles * c.needle_len();

  // 1. The haystack: a walk on the world's Markov chain, each token following the one markov_lag back (the
  //    first markov_lag tokens are uniform).
  std::vector<int64_t> filler(static_cast<size_t>(filler_len));
  auto follow = [&](int64_t from) {
    if (c.markov_branching == 0) return c.filler_begin() + uniform_int(rng, c.num_filler);
    const auto& cdf = cdf_[static_cast<size_t>(from - c.filler_begin())];
    const double u = uniform01(rng);
    const size_t j = static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    return next_[static_cast<size_t>(from - c.filler_begin())][std::min(j, cdf.size() - 1)];
  };
  const auto lag = static_cast<size_t>(c.markov_lag);
  for (size_t i = 0; i < filler.size(); ++i)
    filler[i] = i < lag ? c.filler_begin() + uniform_int(rng, c.num_filler) : follow(filler[i - lag]);

  // 2. Spans copied verbatim later, in filler coordinates, placed before the needles so that needles can be
  //    kept out of them (a needle inside a span would break the copy). The 2 * num_spans intervals (sources and
  //    copies) are laid out without overlap by drawing the free filler between them (sorted uniform gaps), then
  //    paired at random, the earlier of a pair being the source: every span always fits, since min_seq_len()
  //    reserves the room, and copy distances range from adjacent to the whole haystack.
  struct FillerSpan {
    int64_t source, copy;
  };
  std::vector<FillerSpan> fspans;
  const int64_t S = c.span_len;
  const int64_t n_iv = 2 * c.num_spans;
  if (n_iv > 0) {
    const int64_t free_len = filler_len - n_iv * S;
    RTP_CHECK(free_len >= 0, "toy task: internal error: no room for ", c.num_spans, " spans of ", S);
    std::vector<int64_t> gaps(static_cast<size_t>(n_iv));
    for (auto& g : gaps) g = uniform_int(rng, free_len + 1);
    std::sort(gaps.begin(), gaps.end());
    std::vector<int64_t> starts(static_cast<size_t>(n_iv));
    for (int64_t i = 0; i < n_iv; ++i) starts[static_cast<size_t>(i)] = gaps[static_cast<size_t>(i)] + i * S;
    for (int64_t i = n_iv - 1; i > 0; --i)  // Fisher-Yates: random pairing
      std::swap(starts[static_cast<size_t>(i)], starts[static_cast<size_t>(uniform_int(rng, i + 1))]);
    for (int64_t i = 0; i < n_iv; i += 2) {
      const int64_t src = std::min(starts[static_cast<size_t>(i)], starts[static_cast<size_t>(i + 1)]);
      const int64_t dst = std::max(starts[static_cast<size_t>(i)], starts[static_cast<size_t>(i + 1)]);
      std::copy(filler.begin() + src, filler.begin() + src + S, filler.begin() + dst);
      fspans.push_back({src, dst});
    }
    // Listed in order of source position.
    std::sort(fspans.begin(), fspans.end(), [](const FillerSpan& x, const FillerSpan& y) { return x.source < y.source; });
  }

  // 3. Needle insertion points (a needle at point k goes right before filler[k]): uniform over the points that
  //    do not fall strictly inside a span's source or copy.
  std::vector<char> inside(static_cast<size_t>(filler_len + 1), 0);
  for (const auto& f : fspans)
    for (int64_t i = 1; i < S; ++i) inside[static_cast<size_t>(f.source + i)] = inside[static_cast<size_t>(f.copy + i)] = 1;
  std::vector<int64_t> allowed;
  for (int64_t k = 0; k <= filler_len; ++k)
    if (!inside[static_cast<size_t>(k)]) allowed.push_back(k);
  std::vector<int64_t> points(static_cast<size_t>(c.num_needles));
  for (auto& p : points) p = allowed[static_cast<size_t>(uniform_int(rng, static_cast<int64_t>(allowed.size())))];
  std::sort(points.begin(), points.end());

  // 4. Distinct keys and distinct values for the needles.
  auto draw_distinct = [&](int64_t begin, int64_t n, int64_t len, std::set<std::vector<int64_t>>& seen) {
    for (;;) {
      std::vector<int64_t> v(static_cast<size_t>(len));
      for (auto& x : v) x = begin + uniform_int(rng, n);
      if (seen.insert(v).second) return v;
    }
  };
  std::set<std::vector<int64_t>> seen_keys, seen_values;
  ToySample out;
  out.needles.resize(static_cast<size_t>(c.num_needles));
  for (auto& nd : out.needles) {
    nd.key = draw_distinct(c.key_begin(), c.num_keys, c.key_len, seen_keys);
    nd.value = draw_distinct(c.value_begin(), c.num_values, c.value_len, seen_values);
  }

  if (c.random_spans && !fspans.empty()) {
    std::set<int64_t> needle_key_tokens;
    for (const auto& nd : out.needles) needle_key_tokens.insert(nd.key.begin(), nd.key.end());
    std::vector<int64_t> pool;
    for (int64_t t = c.filler_begin(); t < c.value_begin() + c.num_values; ++t)
      if (!needle_key_tokens.count(t)) pool.push_back(t);
    for (const auto& f : fspans)
      for (int64_t i = 0; i < S; ++i)
        filler[static_cast<size_t>(f.source + i)] = filler[static_cast<size_t>(f.copy + i)] =
            pool[static_cast<size_t>(uniform_int(rng, static_cast<int64_t>(pool.size())))];
  }

  // 5. Assemble BOS + filler with needles inserted.
  auto& ids = out.ids;
  ids.reserve(static_cast<size_t>(seq_len));
  ids.push_back(kBos);
  size_t next_needle = 0;
  for (int64_t i = 0; i <= filler_len; ++i) {
    while (next_needle < points.size() && points[next_needle] == i) {
      auto& nd = out.needles[next_needle++];
      nd.position = static_cast<int64_t>(ids.size());
      ids.push_back(kKey);
      if (c.adjacent) ids.push_back(kVal);
      ids.insert(ids.end(), nd.key.begin(), nd.key.end());
      if (!c.adjacent) ids.push_back(kVal);
      ids.insert(ids.end(), nd.value.begin(), nd.value.end());
    }
    if (i < filler_len) ids.push_back(filler[static_cast<size_t>(i)]);
  }
  auto final_pos = [&](int64_t k) {  // position of filler[k]
    const int64_t before = std::upper_bound(points.begin(), points.end(), k) - points.begin();
    return 1 + k + before * c.needle_len();
  };
  for (const auto& f : fspans) out.spans.push_back({final_pos(f.source), final_pos(f.copy), S});

  // 6. Queries: distinct needles in random order (partial Fisher-Yates).
  std::vector<int64_t> order(static_cast<size_t>(c.num_needles));
  for (int64_t i = 0; i < c.num_needles; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < c.num_queries; ++i) {
    const int64_t j = i + uniform_int(rng, c.num_needles - i);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
    const auto& nd = out.needles[static_cast<size_t>(order[static_cast<size_t>(i)])];
    ToyQuery q;
    q.position = static_cast<int64_t>(ids.size());
    q.needle = order[static_cast<size_t>(i)];
    ids.push_back(kQuery);
    if (c.adjacent) ids.push_back(kAns);
    ids.insert(ids.end(), nd.key.begin(), nd.key.end());
    if (c.adjacent) {
      q.ans_position = static_cast<int64_t>(ids.size()) - 1;
    } else {
      q.ans_position = static_cast<int64_t>(ids.size());
      ids.push_back(kAns);
    }
    ids.insert(ids.end(), nd.value.begin(), nd.value.end());
    for (int64_t t = 0; t < c.value_len; ++t) out.answer_positions.push_back(q.ans_position + t);
    out.queries.push_back(q);
  }
  RTP_CHECK(static_cast<int64_t>(ids.size()) == seq_len, "toy task: internal error: built ", ids.size(),
            " tokens, expected ", seq_len);
  return out;
}

std::vector<ToySample> ToyTask::generate_many(int64_t seq_len, uint64_t seed, uint64_t stream, uint64_t index,
                                              int64_t count) const {
  std::vector<ToySample> out;
  out.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out.push_back(generate(seq_len, sample_seed(seed, stream, index + i)));
  return out;
}

torch::Tensor stack_ids(const std::vector<ToySample>& samples) {
  RTP_CHECK(!samples.empty(), "stack_ids: no samples");
  const int64_t B = static_cast<int64_t>(samples.size());
  const int64_t T = static_cast<int64_t>(samples[0].ids.size());
  torch::Tensor ids = torch::empty({B, T}, torch::kInt64);
  auto* p = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = samples[static_cast<size_t>(b)].ids;
    RTP_CHECK(static_cast<int64_t>(s.size()) == T, "stack_ids: sample ", b, " has ", s.size(),
              " tokens, sample 0 has ", T, " (a batch needs equal lengths)");
    std::copy(s.begin(), s.end(), p + b * T);
  }
  return ids;
}

ToyBatch make_batch(const std::vector<ToySample>& samples, double answer_loss_weight) {
  ToyBatch batch;
  batch.input_ids = stack_ids(samples);
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  batch.targets = torch::full({B, T}, int64_t{-100}, torch::kInt64);
  batch.targets.narrow(1, 0, T - 1).copy_(batch.input_ids.narrow(1, 1, T - 1));
  batch.loss_weights = torch::ones({B, T}, torch::kFloat32);
  batch.loss_weights.select(1, T - 1).zero_();
  batch.answer_mask = torch::zeros({B, T}, torch::kBool);
  batch.copy_mask = torch::zeros({B, T}, torch::kBool);
  auto w = batch.loss_weights.accessor<float, 2>();
  auto m = batch.answer_mask.accessor<bool, 2>();
  auto cm = batch.copy_mask.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (const auto& sp : samples[static_cast<size_t>(b)].spans)
      for (int64_t i = 1; i < sp.length; ++i) cm[b][sp.copy + i - 1] = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p : samples[static_cast<size_t>(b)].answer_positions) {
      w[b][p] = static_cast<float>(answer_loss_weight);
      m[b][p] = true;
    }
  return batch;
}

torch::Tensor weighted_lm_loss(const torch::Tensor& logits, const ToyBatch& batch) {
  const int64_t V = logits.size(-1);
  const auto dev = logits.device();
  auto ce = torch::nn::functional::cross_entropy(
      logits.reshape({-1, V}).to(torch::kFloat32), batch.targets.to(dev).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(-100));
  auto w = batch.loss_weights.to(dev).reshape({-1});
  return (ce * w).sum() / w.sum();
}

ToyAccuracy toy_accuracy(model::Qwen3Model& model, const std::vector<ToySample>& samples,
                         const model::ForwardOptions& options, int64_t batch_size) {
  RTP_CHECK(batch_size >= 1, "toy_accuracy: batch_size must be >= 1");
  torch::NoGradGuard no_grad;
  ToyAccuracy acc;
  size_t i = 0;
  while (i < samples.size()) {
    // A run of equal-length samples, at most batch_size long.
    size_t j = i + 1;
    while (j < samples.size() && j - i < static_cast<size_t>(batch_size) && samples[j].ids.size() == samples[i].ids.size())
      ++j;
    std::vector<ToySample> chunk(samples.begin() + static_cast<std::ptrdiff_t>(i),
                                 samples.begin() + static_cast<std::ptrdiff_t>(j));
    torch::Tensor ids = stack_ids(chunk).to(model.device());
    torch::Tensor pred = model.forward(ids, options).argmax(-1).to(torch::kCPU).contiguous();
    auto pa = pred.accessor<int64_t, 2>();
    for (size_t b = 0; b < chunk.size(); ++b) {
      const auto& s = chunk[b];
      for (const auto& q : s.queries) {
        const int64_t value_len = static_cast<int64_t>(s.needles[static_cast<size_t>(q.needle)].value.size());
        bool all = true;
        for (int64_t t = 0; t < value_len; ++t) {
          const int64_t p = q.ans_position + t;
          const bool ok = pa[static_cast<int64_t>(b)][p] == s.ids[static_cast<size_t>(p + 1)];
          acc.correct_tokens += ok;
          all = all && ok;
        }
        acc.answer_tokens += value_len;
        acc.queries += 1;
        acc.correct += all;
      }
    }
    i = j;
  }
  return acc;
}

}  // namespace rtp::data
