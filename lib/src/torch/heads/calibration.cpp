#include "rtp/heads/calibration.h"

#include <torch/torch.h>

#include <random>

#include "rtp/core/error.h"
#include "rtp/data/toy_task.h"

namespace rtp::heads {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// floor(u * n) with u from the 53 top bits: the same integers on every standard library.
int64_t uniform_int(std::mt19937_64& rng, int64_t n) {
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
  return std::min<int64_t>(n - 1, static_cast<int64_t>(u * static_cast<double>(n)));
}

}  // namespace

std::vector<CalibrationSequence> make_calibration_sequences(const CalibrationSpec& spec) {
  const int64_t T = spec.seq_len, L = spec.span_len;
  RTP_CHECK(spec.num_sequences >= 1, "--num-sequences must be >= 1, found ", spec.num_sequences);
  RTP_CHECK(L >= 1, "--span-len must be >= 1, found ", L);
  RTP_CHECK(T >= 2 * L + 2, "--seq-len ", T, " is too short for two copies of a ", L,
            "-token span with a prefix and a filler token (need at least 2 x span_len + 2 = ", 2 * L + 2, ")");
  const bool toy = spec.source == "toy";
  RTP_CHECK(toy || spec.source == "text", "unknown calibration '", spec.source, "': expected toy or text");
  if (toy) RTP_CHECK(spec.vocab_size >= 2, "toy calibration needs a vocabulary of at least 2 tokens, found ", spec.vocab_size);
  else RTP_CHECK(!spec.text_tokens.empty(), "text calibration needs a non-empty token stream");
  // Toy: ids from the toy task's non-special range, BOS first, when the vocabulary has room for it.
  const bool toy_ranges = toy && spec.vocab_size >= data::kNumSpecial + 16;
  const int64_t lo = toy_ranges ? data::kNumSpecial : 0;

  const int64_t prefix_max = std::max<int64_t>(1, (T - 2 * L) / 8);
  std::vector<CalibrationSequence> out;
  out.reserve(static_cast<size_t>(spec.num_sequences));
  for (int64_t s = 0; s < spec.num_sequences; ++s) {
    std::mt19937_64 rng(splitmix64(spec.seed ^ splitmix64(static_cast<uint64_t>(s) + 0x5eedULL)));
    CalibrationSequence c;
    c.ids.resize(static_cast<size_t>(T));
    if (toy) {
      for (auto& t : c.ids) t = lo + uniform_int(rng, spec.vocab_size - lo);
      if (toy_ranges) c.ids[0] = data::kBos;
    } else {
      const int64_t n = static_cast<int64_t>(spec.text_tokens.size());
      const int64_t off = uniform_int(rng, n);
      for (int64_t i = 0; i < T; ++i) c.ids[i] = spec.text_tokens[(off + i) % n];
    }
    c.layout.length = L;
    c.layout.first = 1 + uniform_int(rng, prefix_max);
    c.layout.second = T - L;
    for (int64_t i = 0; i < L; ++i) c.ids[c.layout.second + i] = c.ids[c.layout.first + i];
    out.push_back(std::move(c));
  }
  return out;
}

const std::string& builtin_calibration_text() {
  static const std::string text =
      "The lighthouse keeper kept a ledger of every ship that passed the point. Each entry gave the name of the "
      "vessel, the hour it was sighted, the direction of the wind and the state of the sea. Over forty years the "
      "ledger grew to eleven volumes, and the keeper's daughter, who inherited the post, read them all one winter. "
      "She found that the same schooner had passed on the first day of spring in nineteen different years, always "
      "heading north, always within an hour of noon. Nobody in the harbour town remembered its captain, and the "
      "shipping registers listed no vessel of that name. She wrote to the maritime archive in the capital, to the "
      "insurers and to the lighthouse service, and received three polite letters saying that nothing was known. "
      "In the twentieth spring she rowed out to the point before dawn with a camera, a thermos of tea and the "
      "eleventh volume of the ledger, and waited for the wind to turn.";
  return text;
}

HeadScores score_model_heads(model::Qwen3Model& model, const std::vector<CalibrationSequence>& sequences,
                             const ScoreOptions& options, int64_t batch_size,
                             const std::function<void(int64_t, int64_t)>& progress) {
  RTP_CHECK(!sequences.empty(), "score_model_heads: no calibration sequences");
  RTP_CHECK(batch_size >= 1, "--batch-size must be >= 1, found ", batch_size);
  const auto& cfg = model.config();
  const int64_t T = static_cast<int64_t>(sequences.front().ids.size());
  for (const auto& s : sequences)
    RTP_CHECK(static_cast<int64_t>(s.ids.size()) == T, "calibration sequences must have equal length");
  RTP_CHECK(options.window < T, "--window ", options.window, " must be shorter than --seq-len ", T,
            " (long-range mass needs queries past the window)");
  RTP_CHECK(options.sink + options.window < T, "--sink ", options.sink, " + --window ", options.window,
            " must be shorter than --seq-len ", T, ": long-range keys are past the window and not sinks, and there ",
            "would be none (every long-range score 0)");
  HeadScoreAccumulator acc(cfg.num_hidden_layers, cfg.num_attention_heads);
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(sequences.size());
  for (int64_t b0 = 0; b0 < n; b0 += batch_size) {
    const int64_t b1 = std::min(n, b0 + batch_size);
    std::vector<SpanLayout> layouts;
    auto ids = torch::empty({b1 - b0, T}, torch::kInt64);
    for (int64_t b = b0; b < b1; ++b) {
      std::copy(sequences[b].ids.begin(), sequences[b].ids.end(), ids[b - b0].data_ptr<int64_t>());
      layouts.push_back(sequences[b].layout);
    }
    model::ForwardOptions fo;
    fo.return_hidden = true;  // the LM head is not needed
    fo.observer = [&](const model::LayerAttentionInputs& in) {
      acc.add(in.layer, layer_score_sums(in.q, in.k, in.scale, layouts, options));
    };
    model.forward(ids.to(model.device()), fo);
    if (progress) progress(b1, n);
  }
  return acc.scores();
}

}  // namespace rtp::heads
