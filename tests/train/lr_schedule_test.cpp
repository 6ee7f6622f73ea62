#include "rtp/train/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

#include "rtp/core/error.h"

using rtp::train::lr_at_step;

TEST(LrSchedule, HandComputedPoints) {
  // peak 1e-3, warm-up 10, 111 steps, floor 0.1: cosine over steps 10..110 (100 intervals).
  const double peak = 1e-3, r = 0.1;
  EXPECT_DOUBLE_EQ(lr_at_step(0, 111, 10, peak, r), 1e-4);    // (0+1)/10
  EXPECT_DOUBLE_EQ(lr_at_step(4, 111, 10, peak, r), 5e-4);    // (4+1)/10
  EXPECT_DOUBLE_EQ(lr_at_step(9, 111, 10, peak, r), 1e-3);    // end of warm-up
  EXPECT_DOUBLE_EQ(lr_at_step(10, 111, 10, peak, r), 1e-3);   // cos(0)
  EXPECT_NEAR(lr_at_step(60, 111, 10, peak, r), 5.5e-4, 1e-15);  // t = 1/2: r + (1-r)/2
  EXPECT_NEAR(lr_at_step(35, 111, 10, peak, r), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4))), 1e-15);
  EXPECT_NEAR(lr_at_step(110, 111, 10, peak, r), 1e-4, 1e-15);  // last step: the floor
  EXPECT_NEAR(lr_at_step(500, 111, 10, peak, r), 1e-4, 1e-15);  // beyond: stays at the floor
}

TEST(LrSchedule, NoWarmupAndMonotoneDecay) {
  EXPECT_DOUBLE_EQ(lr_at_step(0, 100, 0, 2.0, 0.0), 2.0);
  EXPECT_NEAR(lr_at_step(99, 100, 0, 2.0, 0.0), 0.0, 1e-15);
  double prev = 1e9;
  for (int s = 0; s < 100; ++s) {
    const double lr = lr_at_step(s, 100, 0, 2.0, 0.0);
    EXPECT_LE(lr, prev);
    prev = lr;
  }
  EXPECT_THROW(lr_at_step(-1, 10, 0, 1.0, 0.1), rtp::Error);
}
