#pragma once
// A layer's heads of one kind attended in place (ops::QueryGroupsInto: queries read from, outputs written into, tensors
// of all the layer's query heads) against the same heads gathered, attended without it and scattered back: the CPU and
// the GPU tests of the op share the case. Four KV heads (streaming, retrieval, streaming, retrieval) of three query heads
// each, a chunk of 200 queries after 128 cached tokens (a partial last block), the streaming call's keys skipping 60
// tokens after the sinks as a prompt chunk's do; q and out are [Hq, Tq, D] views of [Tq, Hq, D] memory, as the model
// hands them out.
#include <torch/torch.h>

#include <vector>

#include "rtp/ops/sparse_attention.h"

namespace rtp::testing {

struct QueryGroupsCase {
  torch::Tensor after_retrieval;  // out after the retrieval call alone
  torch::Tensor in_place;         // out after both calls
  torch::Tensor gathered;         // the reference: every head's output by gather, call, scatter
  float untouched = 7.f;          // what out held before the calls
};

inline QueryGroupsCase run_query_groups_case(torch::TensorOptions opt, int64_t D,
                                             kernels::PrefillKernel kernel = kernels::PrefillKernel::AUTO) {
  using kernels::HeadKind;
  torch::manual_seed(73);
  const int64_t G = 3, Hq = 12, q_offset = 128, Tq = 200, T = q_offset + Tq, skip = 60;
  ops::SparseConfig c;
  c.sink = 4, c.window = 32, c.block_size = 64, c.top_p = 0.7f, c.prefill_kernel = kernel;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  const auto q = torch::randn({Tq, Hq, D}, f32).to(opt).permute({1, 0, 2});
  const auto k_ret = torch::randn({2, T, D}, f32).to(opt), v_ret = torch::randn({2, T, D}, f32).to(opt);
  const auto k_str = torch::randn({2, T - skip, D}, f32).to(opt), v_str = torch::randn({2, T - skip, D}, f32).to(opt);
  const auto index_dtype = opt.device().is_cuda() ? torch::kBFloat16 : torch::kFloat32;
  const auto lists = ops::select_blocks(torch::randn({2, G, Tq, 16}, f32).to(opt.dtype(index_dtype)),
                                        torch::randn({2, T, 16}, f32).to(opt.dtype(index_dtype)), c, 0, q_offset);
  const std::vector<HeadKind> ret(2, HeadKind::RETRIEVAL), str(2, HeadKind::STREAMING);
  QueryGroupsCase x;
  auto out = torch::full({Tq, Hq, D}, x.untouched, f32).to(opt).permute({1, 0, 2});
  ops::QueryGroupsInto into_ret{{1, 3}, G, out}, into_str{{0, 2}, G, out};
  ops::sparse_attention(q, k_ret, v_ret, ret, lists, c, q_offset, 0, &into_ret);
  x.after_retrieval = out.clone();
  ops::sparse_attention(q, k_str, v_str, str, {}, c, q_offset, skip, &into_str);
  x.in_place = out;
  auto heads = [&](std::vector<int64_t> groups) {
    std::vector<int64_t> h;
    for (int64_t g : groups)
      for (int64_t i = 0; i < G; ++i) h.push_back(g * G + i);
    return torch::tensor(h, torch::kInt64).to(opt.device());
  };
  x.gathered = torch::empty({Hq, Tq, D}, opt);
  x.gathered.index_copy_(0, heads({1, 3}), ops::sparse_attention(q.index_select(0, heads({1, 3})), k_ret, v_ret, ret,
                                                                 lists, c, q_offset, 0).to(x.gathered.dtype()));
  x.gathered.index_copy_(0, heads({0, 2}), ops::sparse_attention(q.index_select(0, heads({0, 2})), k_str, v_str, str,
                                                                 {}, c, q_offset, skip).to(x.gathered.dtype()));
  return x;
}

}  // namespace rtp::testing
