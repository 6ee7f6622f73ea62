// Plain-loop CPU reference of moe_group.h and the parameter check shared with CUDA.
#include <vector>

#include "rtp/kernels/moe_group.h"

namespace rtp::kernels {

const char* check_moe_group_params(const MoeGroupParams& p, bool cuda) {
  if (!p.expert || !p.row_token || !p.slot_row || !p.ends) return "moe group: a tensor pointer is null";
  if (p.slots <= 0 || p.slots_per_token <= 0 || p.experts <= 0)
    return "moe group: slots, slots_per_token and experts must be positive";
  if (p.slots % p.slots_per_token != 0) return "moe group: slots must be a multiple of slots_per_token";
  if (p.slots > 0x7fffffff) return "moe group: more than 2^31 - 1 slots (the offsets are int32)";
  if (cuda && p.experts > kMoeGroupMaxExperts) return "moe group: the CUDA kernels take at most 1024 experts";
  if (cuda && !p.workspace) return "moe group: the CUDA kernels need the workspace (moe_group_workspace_bytes)";
  return "";
}

const char* moe_group_cpu(const MoeGroupParams& p) {
  if (const char* why = check_moe_group_params(p, false); *why) return why;
  std::vector<int64_t> count(static_cast<size_t>(p.experts), 0);
  for (int64_t s = 0; s < p.slots; ++s) {
    const int64_t e = p.expert[s];
    if (e < 0 || e >= p.experts) return "moe group: an expert id is outside [0, experts)";
    ++count[static_cast<size_t>(e)];
  }
  // next[e]: the row of expert e's next slot, starting at the slots of all lower experts.
  std::vector<int64_t> next(static_cast<size_t>(p.experts), 0);
  int64_t total = 0;
  for (int64_t e = 0; e < p.experts; ++e) {
    next[static_cast<size_t>(e)] = total;
    total += count[static_cast<size_t>(e)];
    p.ends[e] = static_cast<int32_t>(total);
  }
  for (int64_t s = 0; s < p.slots; ++s) {
    const int64_t r = next[static_cast<size_t>(p.expert[s])]++;
    p.row_token[r] = s / p.slots_per_token;
    p.slot_row[s] = r;
  }
  return "";
}

}  // namespace rtp::kernels
