#pragma once
// Learning-rate schedule: linear warm-up, then cosine decay to a floor.
//   step s in [0, total):
//     s <  warmup: lr = peak * (s + 1) / warmup            (step 0 already learns; step warmup-1 reaches peak)
//     s >= warmup: t = (s - warmup) / max(1, total - warmup - 1)   in [0, 1]
//                  lr = peak * (r + (1 - r) * (1 + cos(pi * t)) / 2),   r = min_lr_ratio
//   so the first step after warm-up is at peak and the last step (total - 1) is exactly peak * r.
//   Steps at or beyond total stay at peak * r.
#include <cstdint>

namespace rtp::train {

double lr_at_step(int64_t step, int64_t total_steps, int64_t warmup_steps, double peak_lr, double min_lr_ratio);

}  // namespace rtp::train
