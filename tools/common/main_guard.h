#pragma once
// The one place where exceptions become a message and an exit code.
#include <cxxopts.hpp>
#include <exception>
#include <functional>
#include <iostream>

#include "rtp/core/error.h"

namespace rtp::tools {

inline int run_guarded(const char* tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << tool << ": bad command line: " << e.what() << " (see " << tool << " --help)\n";
    return 2;
  } catch (const rtp::Error& e) {
    std::cerr << tool << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << tool << ": unexpected error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace rtp::tools
