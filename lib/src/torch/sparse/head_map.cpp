#include "rtp/sparse/head_map.h"

#include "rtp/core/error.h"

namespace rtp::sparse {

HeadMap HeadMap::all_streaming(int64_t layers, int64_t kv_heads, int64_t group_size) {
  HeadMap m;
  m.num_layers = layers;
  m.num_kv_heads = kv_heads;
  m.group_size = group_size;
  m.retrieval.assign(layers, std::vector<uint8_t>(kv_heads, 0));
  return m;
}

std::vector<int64_t> HeadMap::retrieval_heads(int64_t layer) const {
  std::vector<int64_t> out;
  for (int64_t g = 0; g < num_kv_heads; ++g)
    if (retrieval[layer][g]) out.push_back(g);
  return out;
}

int64_t HeadMap::count_retrieval() const {
  int64_t n = 0;
  for (const auto& layer : retrieval)
    for (auto v : layer) n += v ? 1 : 0;
  return n;
}

double HeadMap::retrieval_fraction() const {
  return num_layers * num_kv_heads == 0 ? 0.0 : static_cast<double>(count_retrieval()) / (num_layers * num_kv_heads);
}

void HeadMap::validate(const std::string& origin) const {
  RTP_CHECK(num_layers > 0 && num_kv_heads > 0 && group_size > 0, "'", origin, "': head map needs positive sizes, found ",
            num_layers, " layers, ", num_kv_heads, " KV heads, group size ", group_size);
  RTP_CHECK(static_cast<int64_t>(retrieval.size()) == num_layers, "'", origin, "': head map has ", retrieval.size(),
            " layers, expected ", num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    RTP_CHECK(static_cast<int64_t>(retrieval[l].size()) == num_kv_heads, "'", origin, "': layer ", l, " has ",
              retrieval[l].size(), " KV heads, expected ", num_kv_heads);
    for (auto v : retrieval[l]) RTP_CHECK(v <= 1, "'", origin, "': head map values must be 0 or 1, found ", int(v));
  }
}

}  // namespace rtp::sparse
