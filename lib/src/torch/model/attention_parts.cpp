#include "rtp/model/attention_parts.h"

#include <torch/torch.h>

#include "rtp/core/error.h"

namespace rtp::model {

torch::Tensor merge_attention_parts(const AttentionPart& a, const AttentionPart& b) {
  RTP_CHECK(a.out.sizes() == b.out.sizes() && a.out.dim() == 4, "merge_attention_parts: outputs must be [B, H, T, D] of "
            "one shape, found ", a.out.sizes(), " and ", b.out.sizes());
  const auto column = [&](const torch::Tensor& lse) {
    RTP_CHECK(lse.numel() == a.out.numel() / a.out.size(3), "merge_attention_parts: a log-sum-exp must hold one value per "
              "query of ", a.out.sizes(), ", found ", lse.sizes());
    return lse.reshape({a.out.size(0), a.out.size(1), a.out.size(2), 1}).to(torch::kFloat32);
  };
  // exp(la) / (exp(la) + exp(lb)): a's share of the whole sum, without forming either exponential.
  const auto share_a = torch::sigmoid(column(a.lse) - column(b.lse));
  return torch::lerp(b.out.to(torch::kFloat32), a.out.to(torch::kFloat32), share_a).to(a.out.scalar_type());
}

torch::Tensor chunk_attention_in_two(const LayerAttentionInputs& in, const PartAttention& part) {
  const int64_t tq = in.q.size(2), tk = in.k.size(2), before = tk - tq;
  RTP_CHECK(tq > 0 && before > 0, "chunk_attention_in_two: the chunk's queries must be the last of more keys, found ", tq,
            " queries over ", tk, " keys");
  const auto earlier = part(in.q, in.k.narrow(2, 0, before), in.v.narrow(2, 0, before), /*causal=*/false, in.scale);
  const auto own = part(in.q, in.k.narrow(2, before, tq), in.v.narrow(2, before, tq), /*causal=*/true, in.scale);
  return merge_attention_parts(earlier, own);
}

}  // namespace rtp::model
