#pragma once
// The commit a benchmark measured, for its JSON: $RTP_COMMIT when set (a device run from a copy without .git),
// else `git rev-parse --short HEAD`, else "unknown". Header-only and dependency-free: the kernel benchmark also
// builds on its own on the GPU machine.
#include <cstdio>
#include <cstdlib>
#include <string>

namespace rtp::tools {

inline std::string commit_id() {
  if (const char* c = std::getenv("RTP_COMMIT")) return c;
  std::string out;
  if (FILE* f = popen("git rev-parse --short HEAD 2>/dev/null", "r")) {
    char buf[64];
    while (fgets(buf, sizeof buf, f)) out += buf;
    pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out.empty() ? "unknown" : out;
}

}  // namespace rtp::tools
