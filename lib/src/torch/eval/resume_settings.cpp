#include "rtp/eval/resume_settings.h"

#include <filesystem>

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

}  // namespace rtp::eval
