#pragma once
// Stage-1 objective and metrics: forward KL between a retrieval head's true attention distribution and the
// indexer's distribution over the same causal keys, on sampled queries, in key chunks; token-level top-p recall;
// principal-subspace (SVD) initialisation.
#include <torch/types.h>

#include <vector>

#include "rtp/sparse/indexer.h"

namespace rtp::sparse {

struct KlInputs {
  torch::Tensor q;          // [G, Nq, D]  teacher queries (post-RoPE), sampled rows
  torch::Tensor k;          // [T, D]      teacher keys of the group's KV head (post-RoPE)
  torch::Tensor index_q;    // [G, Nq, d]  student queries (requires grad through the indexer)
  torch::Tensor index_k;    // [T, d]      student keys
  torch::Tensor positions;  // int64 [Nq]: position of each sampled query (its causal keys are 0..pos)
  double scale = 1.0;       // teacher softmax scale (1/sqrt(D))
  int64_t key_chunk = 1024;
};

struct KlResult {
  torch::Tensor loss;    // scalar: mean over the G x Nq rows of KL(p || q_index)
  double recall = 0;     // mean true mass on the index top-p token set (only when asked)
};

// KL(p || softmax(s)) = sum_j p_j (t_j - lse_t) - sum_j p_j s_j + lse_s, accumulated over key chunks so that
// only [G, Nq, chunk] scores are live at a time (teacher) and the student's graph holds [G, Nq, T].
KlResult indexer_kl(const KlInputs& in, double recall_top_p = 0);

// Token-level top-p recall: for each row, the smallest set of keys whose index probability reaches top_p
// (sorted by index probability); returns the mean over rows of the true probability mass on that set.
// index_probs and true_probs: [R, T] rows summing to 1 (0 on masked keys).
double topp_recall(const torch::Tensor& index_probs, const torch::Tensor& true_probs, double top_p);

// Causal mask [Nq, T] for sampled positions.
torch::Tensor causal_rows_mask(const torch::Tensor& positions, int64_t T);

// Initialises each retrieval group's W_q (its G query heads) and W_k from the top-d eigenvectors of the
// group's second-moment matrix C = E[q q^T] + E[k k^T], scaled by (d/D)^(1/4) so that index scores start near
// the true logits q.k/sqrt(D) restricted to that subspace.
// q_samples[layer]: [Hq, N, D]; k_samples[layer]: [Hkv, N, D] (pre-RoPE unless the indexer is post-RoPE);
// undefined for layers without retrieval heads.
void init_indexer_svd(Indexer& indexer, const std::vector<torch::Tensor>& q_samples,
                      const std::vector<torch::Tensor>& k_samples);

}  // namespace rtp::sparse
