// Plain-loop CPU reference of moe_router.h (double arithmetic) and the parameter check shared with CUDA.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "rtp/kernels/moe_router.h"

namespace rtp::kernels {

const char* check_moe_router_params(const MoeRouterParams& p, bool cuda) {
  if (!p.logits || !p.expert || !p.weight) return "moe router: a tensor pointer is null";
  if (p.tokens <= 0 || p.experts <= 0) return "moe router: tokens and experts must be positive";
  if (p.top_k <= 0 || p.top_k > p.experts) return "moe router: top_k must be in [1, experts]";
  if (cuda && (p.experts > kMoeRouterMaxExperts || p.top_k > kMoeRouterMaxTopK))
    return "moe router: the CUDA kernel takes at most 512 experts and top_k 32";
  if (!cuda && p.dtype != DType::F32) return "moe router: the CPU reference takes float32 only";
  return "";
}

void moe_router_cpu(const MoeRouterParams& p) {
  if (*check_moe_router_params(p, false)) return;
  const auto* logits = static_cast<const float*>(p.logits);
  auto* weight = static_cast<float*>(p.weight);
  const int64_t E = p.experts, K = p.top_k;
  std::vector<double> prob(static_cast<size_t>(E));
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t n = 0; n < p.tokens; ++n) {
    const float* l = logits + n * E;
    const double mx = *std::max_element(l, l + E);
    double total = 0;
    for (int64_t e = 0; e < E; ++e) total += prob[e] = std::exp(static_cast<double>(l[e]) - mx);
    for (int64_t e = 0; e < E; ++e) prob[e] /= total;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
    double kept = 0;
    for (int64_t s = 0; s < K; ++s) kept += prob[order[s]];
    for (int64_t s = 0; s < K; ++s) {
      p.expert[n * K + s] = order[s];
      weight[n * K + s] = static_cast<float>(p.norm_topk_prob ? prob[order[s]] / kept : prob[order[s]]);
    }
  }
}

}  // namespace rtp::kernels
