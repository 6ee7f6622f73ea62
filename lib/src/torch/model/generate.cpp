#include <torch/torch.h>

#include <algorithm>

#include "rtp/core/error.h"
#include "rtp/model/qwen3.h"

namespace rtp::model {

torch::Tensor generate_greedy(Qwen3Model& model, const torch::Tensor& prompt, int64_t max_new_tokens,
                              const std::vector<int64_t>& stop_ids, int64_t prefill_chunk) {
  RTP_CHECK(prompt.dim() == 2 && prompt.size(1) > 0 && prompt.scalar_type() == torch::kInt64,
            "generate: prompt must be int64 [B, P] with P > 0, found ", prompt.sizes(), " ", prompt.scalar_type());
  RTP_CHECK(prefill_chunk > 0 && max_new_tokens >= 0, "generate: prefill_chunk must be positive and max_new_tokens "
            "non-negative, found ", prefill_chunk, " and ", max_new_tokens);
  torch::NoGradGuard no_grad;
  KVCache cache(model.config().num_hidden_layers);
  ForwardOptions o;
  o.cache = &cache;
  const int64_t B = prompt.size(0), P = prompt.size(1);
  auto ids = prompt.to(model.device());
  torch::Tensor logits;
  for (int64_t c = 0; c < P; c += prefill_chunk) logits = model.forward(ids.narrow(1, c, std::min(prefill_chunk, P - c)), o);
  std::vector<torch::Tensor> out{ids};
  auto stopped = torch::zeros({B}, torch::TensorOptions(torch::kBool).device(model.device()));
  auto stops = torch::tensor(stop_ids, torch::TensorOptions(torch::kInt64)).to(model.device());
  torch::Tensor last_token;
  for (int64_t n = 0; n < max_new_tokens; ++n) {
    auto next = logits.select(1, logits.size(1) - 1).argmax(-1);  // [B]
    if (last_token.defined()) next = torch::where(stopped, last_token, next);
    out.push_back(next.unsqueeze(1));
    if (stop_ids.size() > 0) stopped = stopped | torch::isin(next, stops);
    last_token = next;
    if (stop_ids.size() > 0 && stopped.all().item<bool>()) break;
    if (n + 1 < max_new_tokens) logits = model.forward(next.unsqueeze(1), o);
  }
  return torch::cat(out, 1).cpu();
}

}  // namespace rtp::model
