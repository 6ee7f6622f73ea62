// Placeholder so that rtpurbo-train links before the indexer trainer lands; delete this file when
// run_indexer_stage is defined for real.
#include "rtp/core/error.h"
#include "rtp/train/stages.h"

namespace rtp::train {

void run_indexer_stage(const TrainConfig&, RunContext&) {
  RTP_THROW("stage 'indexer': the indexer stage is not built yet (lib/src/torch/train/indexer_stage_placeholder.cpp)");
}

}  // namespace rtp::train
