#include <gtest/gtest.h>

#include "rtp/core/error.h"

TEST(Error, CheckThrowsWithTheMessage) {
  try {
    RTP_CHECK(1 + 1 == 3, "expected ", 3, ", found ", 2);
    FAIL() << "RTP_CHECK did not throw";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected 3, found 2"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(RTP_CHECK(true, "never"));
}
