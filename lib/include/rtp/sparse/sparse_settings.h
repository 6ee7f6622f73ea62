#pragma once
#include <cstdint>
#include <string>

namespace rtp::sparse {

// The sparse-attention knobs stored in rtpurbo.json and read by the sparse forward.
struct SparseSettings {
  int64_t sink = 4;            // streaming heads: first tokens always kept
  int64_t window = 8192;       // streaming heads: recent tokens kept (the query itself included)
  int64_t block_size = 64;     // prefill selection granularity (key and query blocks): 64 or 128
  int64_t local_blocks = 1;    // retrieval heads: blocks ending at the diagonal always kept
  double top_p = 0.9;          // retrieval heads: indexer probability mass to keep
  // Prefill selection: pooled index queries per query block (a power of two in [1, block_size]). More than one
  // keeps heads whose queries in one block look at different places from pooling into a query that matches
  // none of them; the selection's logit pass costs this many times more, so large models keep 1.
  int64_t query_sub_blocks = 1;
  // Prefill selection: how the block distributions of the sub-blocks and query heads of a query block are
  // combined, "mean" (default) or "max" (renormalised; keeps blocks few queries need).
  // Exact definition: sparse_attention_params.h, "Sub-block aggregate".
  std::string sub_block_aggregate = "mean";
  int64_t indexer_dim = 16;
  int64_t dense_below = 0;     // prompts shorter than this run dense everywhere (RTP-LLM seqlen_threshold)
  bool post_rope_indexer = false;  // indexer on post-RoPE q/k instead of pre-RoPE
};

}  // namespace rtp::sparse
