#pragma once
// The one place where exceptions become a message and an exit code.
#include <cxxopts.hpp>
#include <exception>
#include <functional>
#include <iostream>
#include <stdexcept>

#include "rtp/core/error.h"

namespace rtp::tools {

// A command-line mistake (tool_args.h): reported like cxxopts' own, with "see TOOL --help", exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline int run_guarded(const char* tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << tool << ": bad command line: " << e.what() << " (see " << tool << " --help)\n";
    return 2;
  } catch (const UsageError& e) {
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
