#pragma once
// Helpers shared by the test suites.
#include <string>

#include "rtp/core/error.h"

namespace rtp::testing {

// The message of the rtp::Error that `f` throws, or a marker when it throws none (so that an expected
// substring is never found in it).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const rtp::Error& e) {
    return e.what();
  }
  return "<no error: the call succeeded>";
}

}  // namespace rtp::testing
