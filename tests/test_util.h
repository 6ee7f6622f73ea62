#pragma once
// Helpers shared by the test suites.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

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

// This process's scratch directory under the system temp directory ("<name>_<pid>"), removed after the last test
// when every test passed and kept (and named) otherwise: two checkouts, or two runs, testing at once never share
// it. One name per test binary; call it first before RUN_ALL_TESTS (e.g. from a namespace-scope initialiser): the
// first call registers the cleanup with gtest.
inline const std::string& process_scratch_dir(const std::string& name) {
  static const std::string dir = [&] {
    const std::string d = (std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()))).string();
    struct Cleanup : ::testing::Environment {
      explicit Cleanup(std::string p) : path(std::move(p)) {}
      void TearDown() override {
        if (::testing::UnitTest::GetInstance()->Passed())
          rtp::remove_tree(path);  // not fs::remove_all: it crashes next to libtorch
        else
          std::cout << "scratch kept in " << path << "\n";
      }
      std::string path;
    };
    ::testing::AddGlobalTestEnvironment(new Cleanup(d));
    return d;
  }();
  return dir;
}

}  // namespace rtp::testing
