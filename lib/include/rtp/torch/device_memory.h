#pragma once
// Peak GPU memory of this process as the caching allocator saw it: what a run needs on a smaller card.
#include <torch/types.h>

#include <cstdint>

namespace rtp {

struct DeviceMemory {
  int64_t peak_allocated = 0;  // bytes held by live tensors at the peak since the last reset
  int64_t peak_reserved = 0;   // bytes the caching allocator held from the driver at its peak
  int64_t total = 0;           // the device's memory
};

// Zeros for a CPU device or a build without CUDA.
DeviceMemory device_memory(torch::Device device);
void reset_peak_device_memory(torch::Device device);

}  // namespace rtp
