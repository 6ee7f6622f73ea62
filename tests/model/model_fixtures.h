#pragma once
// The HF-made fixtures under data/fixtures/models (scripts/gen_model_fixtures.py).
#include <string>
#include <vector>

namespace rtp::testing {

inline std::string model_fixture_dir(const std::string& name) {
  return std::string(RTP_SOURCE_DIR) + "/data/fixtures/models/" + name;
}

inline const std::vector<std::string>& model_fixture_names() {
  static const std::vector<std::string> names = {"qwen3-tiny", "qwen3-tiny-yarn-tied-bf16", "qwen3-moe-tiny",
                                                 "qwen3-moe-tiny-noNorm"};
  return names;
}

}  // namespace rtp::testing
