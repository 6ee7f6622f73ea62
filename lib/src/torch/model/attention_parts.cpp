#include "rtp/model/attention_parts.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/ops/attention_merge.h"

namespace rtp::model {

torch::Tensor chunk_attention_in_two(const LayerAttentionInputs& in, const PartAttention& part) {
  const int64_t tq = in.q.size(2), tk = in.k.size(2), before = tk - tq;
  RTP_CHECK(tq > 0 && before > 0, "chunk_attention_in_two: the chunk's queries must be the last of more keys, found ", tq,
            " queries over ", tk, " keys");
  const auto earlier = part(in.q, in.k.narrow(2, 0, before), in.v.narrow(2, 0, before), /*causal=*/false, in.scale);
  const auto own = part(in.q, in.k.narrow(2, before, tq), in.v.narrow(2, before, tq), /*causal=*/true, in.scale);
  return ops::attention_merge(earlier.out, earlier.lse, own.out, own.lse);
}

}  // namespace rtp::model
