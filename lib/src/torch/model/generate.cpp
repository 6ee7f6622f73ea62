#include <torch/torch.h>

#include <algorithm>

#include "rtp/core/error.h"
#include "rtp/model/decode_stepper.h"
#include "rtp/model/qwen3.h"

namespace rtp::model {

torch::Tensor greedy_continue(DecodeStepper& stepper, torch::Tensor logits, int64_t max_new_tokens,
                              const std::vector<int64_t>& stop_ids, const std::function<ForwardOptions()>& options) {
  RTP_CHECK(logits.dim() == 3 && logits.size(1) > 0, "generate: logits must be [B, n, V] with n > 0, found ", logits.sizes());
  RTP_CHECK(max_new_tokens >= 0, "generate: max_new_tokens must be non-negative, found ", max_new_tokens);
  constexpr int64_t kStopCheckEvery = 8;
  torch::NoGradGuard no_grad;
  const int64_t B = logits.size(0);
  const auto dev = logits.device();
  std::vector<torch::Tensor> out;
  auto stopped = torch::zeros({B}, torch::TensorOptions(torch::kBool).device(dev));
  auto stops = torch::tensor(stop_ids, torch::TensorOptions(torch::kInt64)).to(dev);
  torch::Tensor last_token;
  for (int64_t n = 0; n < max_new_tokens; ++n) {
    auto next = logits.select(1, logits.size(1) - 1).argmax(-1);  // [B]
    if (last_token.defined()) next = torch::where(stopped, last_token, next);
    out.push_back(next.unsqueeze(1));
    if (!stop_ids.empty()) stopped = stopped | torch::isin(next, stops);
    last_token = next;
    if (!stop_ids.empty() && (n + 1) % kStopCheckEvery == 0 && stopped.all().item<bool>()) break;
    if (n + 1 < max_new_tokens) logits = stepper.step(next.unsqueeze(1), options());
  }
  if (out.empty()) return torch::empty({B, 0}, torch::kInt64);
  auto tokens = torch::cat(out, 1).cpu();
  if (!stop_ids.empty()) {
    // Cut after the step at which the last sequence stopped (if every one did).
    const auto is_stop = torch::isin(tokens, stops.cpu());
    const auto any = is_stop.any(1);
    if (any.all().item<bool>()) {
      const int64_t end = is_stop.to(torch::kInt32).argmax(1).max().item<int64_t>() + 1;
      tokens = tokens.narrow(1, 0, end).contiguous();
    }
  }
  return tokens;
}

torch::Tensor prefill_chunked(Qwen3Model& model, KVCache& cache, const torch::Tensor& prompt, int64_t chunk) {
  RTP_CHECK(prompt.dim() == 2 && prompt.size(1) > 0 && prompt.scalar_type() == torch::kInt64,
            "prefill: prompt must be int64 [B, P] with P > 0, found ", prompt.sizes(), " ", prompt.scalar_type());
  RTP_CHECK(chunk > 0, "prefill: the chunk size must be positive, found ", chunk);
  torch::NoGradGuard no_grad;
  ForwardOptions o;
  o.cache = &cache;
  o.last_position_logits = true;
  const int64_t P = prompt.size(1);
  // Host ids stay on the host: each chunk's forward checks its range there and uploads it without a wait (device ids
  // would be checked by a copy back, a wait per chunk).
  const auto& ids = prompt;
  torch::Tensor logits;
  for (int64_t c = 0; c < P; c += chunk) logits = model.forward(ids.narrow(1, c, std::min(chunk, P - c)), o);
  return logits;
}

torch::Tensor generate_greedy(Qwen3Model& model, const torch::Tensor& prompt, int64_t max_new_tokens,
                              const std::vector<int64_t>& stop_ids, int64_t prefill_chunk, bool cuda_graphs) {
  RTP_CHECK(prompt.dim() == 2 && prompt.size(1) > 0 && prompt.scalar_type() == torch::kInt64,
            "generate: prompt must be int64 [B, P] with P > 0, found ", prompt.sizes(), " ", prompt.scalar_type());
  RTP_CHECK(prefill_chunk > 0 && max_new_tokens >= 0, "generate: prefill_chunk must be positive and max_new_tokens "
            "non-negative, found ", prefill_chunk, " and ", max_new_tokens);
  torch::NoGradGuard no_grad;
  KVCache cache(model.config().num_hidden_layers);
  cache.reserve(prompt.size(1) + max_new_tokens);
  const auto logits = prefill_chunked(model, cache, prompt, prefill_chunk);
  ForwardOptions o;
  o.cache = &cache;
  DecodeStepper stepper(model, cuda_graphs);
  auto generated = greedy_continue(stepper, logits, max_new_tokens, stop_ids, [&] { return o; });
  return torch::cat({prompt.cpu(), generated}, 1);
}

}  // namespace rtp::model
