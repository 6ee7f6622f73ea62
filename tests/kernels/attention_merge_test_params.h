#pragma once
// AttentionMergeParams over torch tensors, shared by the merge's CPU and GPU tests: pointers, the first three strides
// of each tensor, sizes from a, dtype from a's scalar type.
#include <torch/torch.h>

#include "rtp/kernels/attention_merge.h"

namespace rtp::test {

inline kernels::AttentionMergeParams attention_merge_params(const torch::Tensor& a, const torch::Tensor& la,
                                                            const torch::Tensor& b, const torch::Tensor& lb,
                                                            torch::Tensor& out) {
  kernels::AttentionMergeParams p;
  p.a = a.data_ptr(), p.b = b.data_ptr(), p.out = out.data_ptr();
  p.lse_a = la.data_ptr<float>(), p.lse_b = lb.data_ptr<float>();
  for (int k = 0; k < 3; ++k) {
    p.a_stride[k] = a.stride(k), p.b_stride[k] = b.stride(k), p.out_stride[k] = out.stride(k);
    p.lse_a_stride[k] = la.stride(k), p.lse_b_stride[k] = lb.stride(k);
  }
  p.batch = a.size(0), p.heads = a.size(1), p.tokens = a.size(2), p.head_dim = a.size(3);
  p.dtype = a.scalar_type() == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
  return p;
}

}  // namespace rtp::test
