#include "rtp/sparse/indexer_training.h"

#include <torch/torch.h>

#include <cmath>

#include "rtp/core/error.h"

namespace rtp::sparse {

torch::Tensor causal_rows_mask(const torch::Tensor& positions, int64_t T) {
  auto j = torch::arange(T, torch::TensorOptions(torch::kInt64).device(positions.device())).unsqueeze(0);
  return j <= positions.unsqueeze(1);
}

double topp_recall(const torch::Tensor& index_probs, const torch::Tensor& true_probs, double top_p) {
  torch::NoGradGuard no_grad;
  auto [sorted, order] = torch::sort(index_probs.to(torch::kFloat64), -1, /*descending=*/true);
  auto before = torch::cumsum(sorted, -1) - sorted;  // mass strictly before each key in the order
  auto keep_sorted = before < top_p;                 // shortest prefix reaching top_p
  auto keep = torch::zeros_like(keep_sorted).scatter(-1, order, keep_sorted);
  return (true_probs.to(torch::kFloat64) * keep.to(torch::kFloat64)).sum(-1).mean().item<double>();
}

KlResult indexer_kl(const KlInputs& in, double recall_top_p) {
  const int64_t G = in.q.size(0), Nq = in.q.size(1), T = in.k.size(0);
  RTP_CHECK(in.index_q.size(0) == G && in.index_q.size(1) == Nq && in.index_k.size(0) == T,
            "indexer_kl: shapes disagree: q ", in.q.sizes(), ", k ", in.k.sizes(), ", index_q ", in.index_q.sizes(),
            ", index_k ", in.index_k.sizes());
  const double index_scale = 1.0 / std::sqrt(static_cast<double>(in.index_q.size(2)));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto qf = in.q.to(torch::kFloat32), kf = in.k.to(torch::kFloat32);
  auto iq = in.index_q.to(torch::kFloat32), ik = in.index_k.to(torch::kFloat32);
  const int64_t chunk = std::max<int64_t>(1, in.key_chunk);

  // Pass 1 (no grad): the teacher's log-normaliser over key chunks.
  torch::Tensor lse_t;
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (int64_t c0 = 0; c0 < T; c0 += chunk) {
      const int64_t n = std::min(chunk, T - c0);
      auto t = torch::matmul(qf, kf.narrow(0, c0, n).t()) * in.scale;  // [G, Nq, n]
      auto mask = causal_rows_mask(in.positions, T).narrow(1, c0, n).unsqueeze(0);
      parts.push_back(torch::logsumexp(t.masked_fill(~mask, neg_inf), -1, true));
    }
    lse_t = torch::logsumexp(torch::cat(parts, -1), -1, true);  // [G, Nq, 1]
  }
  // Pass 2: accumulate sum p t, sum p s (grad) and the student's chunk log-normalisers (grad).
  torch::Tensor p_t = torch::zeros({G, Nq, 1}, qf.options());
  torch::Tensor p_s;
  std::vector<torch::Tensor> lse_s_parts;
  for (int64_t c0 = 0; c0 < T; c0 += chunk) {
    const int64_t n = std::min(chunk, T - c0);
    auto mask = causal_rows_mask(in.positions, T).narrow(1, c0, n).unsqueeze(0);
    torch::Tensor p, t;
    {
      torch::NoGradGuard no_grad;
      t = (torch::matmul(qf, kf.narrow(0, c0, n).t()) * in.scale).masked_fill(~mask, neg_inf);
      p = torch::exp(t - lse_t);  // 0 on masked keys
      p_t = p_t + (p * t.masked_fill(~mask, 0)).sum(-1, true);
    }
    auto s = (torch::matmul(iq, ik.narrow(0, c0, n).t()) * index_scale).masked_fill(~mask, neg_inf);
    auto ps = (p * s.masked_fill(~mask, 0)).sum(-1, true);
    p_s = p_s.defined() ? p_s + ps : ps;
    lse_s_parts.push_back(torch::logsumexp(s, -1, true));
  }
  auto lse_s = torch::logsumexp(torch::cat(lse_s_parts, -1), -1, true);
  auto kl = (p_t - lse_t) - p_s + lse_s;  // [G, Nq, 1]
  KlResult r;
  r.loss = kl.mean();
  if (recall_top_p > 0) {
    torch::NoGradGuard no_grad;
    auto mask = causal_rows_mask(in.positions, T).unsqueeze(0);
    auto t = (torch::matmul(qf, kf.t()) * in.scale).masked_fill(~mask, neg_inf);
    auto s = (torch::matmul(iq, ik.t()) * index_scale).masked_fill(~mask, neg_inf);
    r.recall = topp_recall(torch::softmax(s, -1).reshape({G * Nq, T}), torch::softmax(t, -1).reshape({G * Nq, T}),
                           recall_top_p);
  }
  return r;
}

void init_indexer_svd(Indexer& indexer, const std::vector<torch::Tensor>& q_samples,
                      const std::vector<torch::Tensor>& k_samples) {
  torch::NoGradGuard no_grad;
  const HeadMap& heads = indexer.heads();
  const int64_t d = indexer.dim(), D = indexer.head_dim(), G = heads.group_size;
  RTP_CHECK(d <= D, "indexer_dim=", d, " exceeds head_dim=", D, ": the indexer would not compress anything");
  const double c = std::pow(static_cast<double>(d) / static_cast<double>(D), 0.25);
  for (int64_t l = 0; l < heads.num_layers; ++l) {
    const auto ret = heads.retrieval_heads(l);
    if (ret.empty()) continue;
    RTP_CHECK(q_samples[l].defined() && k_samples[l].defined(), "SVD init: no calibration q/k for layer ", l);
    auto wq = indexer.q_proj(l).view({static_cast<int64_t>(ret.size()) * G, d, D});
    auto wk = indexer.k_proj(l).view({static_cast<int64_t>(ret.size()), d, D});
    for (size_t r = 0; r < ret.size(); ++r) {
      const int64_t g = ret[r];
      auto q = q_samples[l].narrow(0, g * G, G).reshape({-1, D}).to(torch::kFloat64).cpu();
      auto k = k_samples[l][g].reshape({-1, D}).to(torch::kFloat64).cpu();
      auto C = torch::matmul(q.t(), q) / q.size(0) + torch::matmul(k.t(), k) / k.size(0);
      auto [evals, evecs] = torch::linalg_eigh(C);  // ascending
      auto top = evecs.narrow(1, D - d, d).flip(1).t().contiguous();  // [d, D], largest first
      auto w = (top * c).to(wq.scalar_type()).to(wq.device());
      for (int64_t j = 0; j < G; ++j) wq[r * G + j].copy_(w);
      wk[r].copy_(w);
    }
  }
}

}  // namespace rtp::sparse
