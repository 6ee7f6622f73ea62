#include "rtp/torch/device_memory.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace rtp {

DeviceMemory device_memory(torch::Device device) {
  DeviceMemory m;
#ifdef RTPURBO_WITH_CUDA
  if (!device.is_cuda()) return m;
  namespace alloc = c10::cuda::CUDACachingAllocator;
  const auto index = device.has_index() ? device.index() : c10::DeviceIndex(0);
  const auto stats = alloc::getDeviceStats(index);
  const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  m.peak_allocated = stats.allocated_bytes[aggregate].peak;
  m.peak_reserved = stats.reserved_bytes[aggregate].peak;
  c10::cuda::CUDAGuard guard(index);
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) m.total = static_cast<int64_t>(total_bytes);
#endif
  return m;
}

void reset_peak_device_memory(torch::Device device) {
#ifdef RTPURBO_WITH_CUDA
  if (!device.is_cuda()) return;
  c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : c10::DeviceIndex(0));
#endif
}

}  // namespace rtp
