#include "rtp/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "rtp/core/error.h"

namespace rtp::train {

double lr_at_step(int64_t step, int64_t total_steps, int64_t warmup_steps, double peak_lr, double min_lr_ratio) {
  RTP_CHECK(step >= 0 && warmup_steps >= 0 && min_lr_ratio >= 0 && min_lr_ratio <= 1,
            "lr_at_step: expected step >= 0, warmup_steps >= 0, min_lr_ratio in [0, 1]; got step ", step,
            ", warmup_steps ", warmup_steps, ", min_lr_ratio ", min_lr_ratio);
  if (step < warmup_steps) return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps - 1);
  const double t = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(span));
  return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + std::cos(M_PI * t)));
}

}  // namespace rtp::train
