#include "rtp/model/step_attention.h"

#include "rtp/core/error.h"

namespace rtp::model {

void StepAttention::attend_token_on_device(const LayerAttentionInputs&, const torch::Tensor&, torch::Tensor&) {
  RTP_THROW("internal: attend_token_on_device called on a cache whose attends_on_device() is false");
}

}  // namespace rtp::model
