// The size strings the tools print, exactly.
#include "rtp/core/human_units.h"

#include <gtest/gtest.h>

TEST(HumanUnits, BytesInBinaryUnits) {
  EXPECT_EQ(rtp::human_bytes(0), "0 B");
  EXPECT_EQ(rtp::human_bytes(1023), "1023 B");
  EXPECT_EQ(rtp::human_bytes(1024), "1.00 KiB");
  EXPECT_EQ(rtp::human_bytes(6.0 * 1024 * 1024), "6.00 MiB");
  EXPECT_EQ(rtp::human_bytes(61.1e9), "56.90 GiB");
  EXPECT_EQ(rtp::human_bytes(3.0 * 1024 * 1024 * 1024 * 1024 * 1024), "3072.00 TiB");  // no unit past TiB
}

TEST(HumanUnits, CountsWithDecimalSuffixes) {
  EXPECT_EQ(rtp::human_count(950), "950");
  EXPECT_EQ(rtp::human_count(162400), "162.4K");
  EXPECT_EQ(rtp::human_count(4.2e6), "4.2M");
  EXPECT_EQ(rtp::human_count(30.53e9), "30.5B");
}
