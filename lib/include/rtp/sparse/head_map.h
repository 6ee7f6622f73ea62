#pragma once
// Which KV heads of each layer keep the full context (retrieval) and which become streaming heads.
// Selection is per KV head: under GQA a KV head must keep its cache if any query head of its group needs it.
#include <cstdint>
#include <string>
#include <vector>

namespace rtp::sparse {

struct HeadMap {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t group_size = 1;  // query heads per KV head
  // retrieval[layer][kv_head] = 1 for a retrieval (full-attention) KV head.
  std::vector<std::vector<uint8_t>> retrieval;

  static HeadMap all_streaming(int64_t layers, int64_t kv_heads, int64_t group_size);
  bool is_retrieval(int64_t layer, int64_t kv_head) const { return retrieval[layer][kv_head] != 0; }
  // Retrieval KV heads of one layer, ascending (the "retrieval slots" of kernels/sparse_attention_params.h).
  std::vector<int64_t> retrieval_heads(int64_t layer) const;
  int64_t count_retrieval() const;
  double retrieval_fraction() const;  // of all KV heads
  void validate(const std::string& origin) const;  // shapes consistent, values 0/1
};

}  // namespace rtp::sparse
