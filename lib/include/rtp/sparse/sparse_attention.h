#pragma once
// The sparse forward as an AttentionSeam: streaming KV heads attend to sink + window, retrieval KV heads to
// the key blocks their indexer selects (top-p, plus sink and local blocks), with the semantics of
// kernels/include/rtp/kernels/sparse_attention_params.h. On CPU (and as the reference) it builds the exact
// visibility mask and calls SDPA; on CUDA it dispatches to the kernels where available.
#include <torch/types.h>

#include <vector>

#include "rtp/model/attention_seam.h"
#include "rtp/ops/sparse_attention.h"
#include "rtp/sparse/head_map.h"
#include "rtp/sparse/indexer.h"
#include "rtp/sparse/sparse_settings.h"

namespace rtp::sparse {

struct SparseStats {
  double attended_pairs = 0;     // visible (query, key) pairs summed over query heads and layers
  double causal_pairs = 0;       // what dense causal attention would touch
  double true_mass_kept = 0;     // retrieval heads: sum over queries of true attention mass on visible keys
  double true_mass_queries = 0;  // number of (retrieval query head, query) terms in true_mass_kept
  // Per (layer, KV head): attended and causal pairs summed over the group's query heads (density maps).
  std::vector<std::vector<double>> head_attended, head_causal;
  double attention_fraction() const { return causal_pairs > 0 ? attended_pairs / causal_pairs : 0; }
  double recall() const { return true_mass_queries > 0 ? true_mass_kept / true_mass_queries : 0; }
};

// The kernels' view of the settings (prefill, selection and decode share it).
ops::SparseConfig to_ops_config(const SparseSettings& settings);

class SparseAttention : public model::AttentionSeam {
 public:
  SparseAttention(HeadMap heads, SparseSettings settings, const Indexer* indexer);

  torch::Tensor attend(const model::LayerAttentionInputs& in) override;

  // Visibility mask [Hq, T, T] (true = attended) of one layer for a batch-1 input; used by attend() and tests.
  torch::Tensor layer_mask(const model::LayerAttentionInputs& in) const;
  // Attended (query, key) pairs per KV head of `layer` at length T, counted from the rule and the retrieval heads'
  // block lists (in retrieval-head order; may be null when the layer has none or T < dense_below) without a mask.
  std::vector<double> kv_head_pairs(int64_t layer, int64_t T, const ops::BlockLists* lists) const;
  // The retrieval heads' block lists the reference path uses (float32 indexer on the CPU), for one sequence.
  ops::BlockLists reference_lists(const model::LayerAttentionInputs& in) const;

  void set_measure_recall(bool on) { measure_recall_ = on; }
  const SparseStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  bool use_kernels = true;  // CUDA: use the CUDA kernels when built with them
  // Count attended pairs per head (from the block lists on the kernel path: no mask is built for them).
  bool collect_stats = true;

 private:
  HeadMap heads_;
  SparseSettings settings_;
  const Indexer* indexer_;
  bool measure_recall_ = false;
  SparseStats stats_;
};

}  // namespace rtp::sparse
