#pragma once
// Sizes for people: what the tools print for memory and parameter counts.
#include <string>

namespace rtp {

// Bytes in binary units: "512 B", "6.00 MiB", "61.10 GiB".
std::string human_bytes(double bytes);
// A count with a decimal suffix: "950", "4.2M", "30.5B" (a fixed "B" printed a 4M-parameter model as 0.00B).
std::string human_count(double n);

}  // namespace rtp
