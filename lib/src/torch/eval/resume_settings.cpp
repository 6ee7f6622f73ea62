#include "rtp/eval/resume_settings.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "rtp/core/error.h"

namespace rtp::eval {

void require_same_settings(const std::string& path, const nlohmann::json& was, const nlohmann::json& now) {
  std::string differ;
  for (const auto& [key, value] : now.items()) {
    const nlohmann::json before = was.contains(key) ? was[key] : nlohmann::json();
    if (before != value) differ += "\n  " + key + ": was " + before.dump() + ", now " + value.dump();
  }
  RTP_CHECK(differ.empty(), "--resume: '", path, "' is another evaluation; these settings differ:", differ,
            "\nrun with the settings it was started with, or without --resume in another --out-dir");
}

std::string absolute_setting_path(const std::string& path) {
  namespace fs = std::filesystem;
  return path.empty() ? path : fs::weakly_canonical(fs::absolute(path)).string();
}

namespace {

namespace fs = std::filesystem;

// FNV-1a, 64 bits: a change detector, not a defence against anyone crafting a collision.
struct Fnv64 {
  uint64_t h = 14695981039346656037ULL;
  void add(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 1099511628211ULL;
  }
  void add(const std::string& s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
};

constexpr uintmax_t kHashedBytesMax = 64ull << 20;

void add_file(Fnv64& f, const fs::path& file) {
  std::error_code ec;
  const fs::path real = fs::canonical(file, ec);
  RTP_CHECK(!ec, "cannot resolve '", file.string(), "': ", ec.message());
  const uintmax_t size = fs::file_size(real, ec);
  RTP_CHECK(!ec, "cannot read the size of '", real.string(), "': ", ec.message());
  f.add(std::to_string(size));
  if (size > kHashedBytesMax) {
    f.add(real.string());
    f.add(std::to_string(fs::last_write_time(real, ec).time_since_epoch().count()));
    return;
  }
  std::ifstream in(real, std::ios::binary);
  RTP_CHECK(in.good(), "cannot open '", real.string(), "' for reading");
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    f.add(buf.data(), static_cast<size_t>(in.gcount()));
  }
}

}  // namespace

std::string contents_fingerprint(const std::string& path) {
  if (path.empty()) return "";
  Fnv64 f;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec))
      if (fs::is_regular_file(it->path())) files.push_back(it->path());  // links to files included
    RTP_CHECK(!ec, "cannot list '", path, "': ", ec.message());
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      f.add(file.filename().string());
      add_file(f, file);
    }
  } else {
    add_file(f, path);
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
  return hex;
}

}  // namespace rtp::eval
