#pragma once
// A picture of a head profile: hand-written SVG, no dependencies. Rows are layers, columns query heads, each
// cell (one <rect class="cell"> per query head, with a <title> tooltip) coloured by retrieval score on a fixed
// [0, 1] scale (the score is a probability mass); query heads of the selected KV heads are outlined; colour bar
// and axis labels included.
#include <string>

#include "rtp/heads/head_profile.h"

namespace rtp::heads {

std::string render_heatmap_svg(const HeadProfile& profile);
void write_heatmap_svg(const HeadProfile& profile, const std::string& path);  // atomic

}  // namespace rtp::heads
