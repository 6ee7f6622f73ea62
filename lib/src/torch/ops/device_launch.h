#pragma once
// Where an op's CUDA kernel runs: on its tensors' GPU, whichever GPU is current.
#ifdef RTPURBO_WITH_CUDA
#include <c10/core/Device.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace rtp::ops {

// A kernel launches on the current device, and its per-device state (shared-memory opt-ins, SM counts) is the current
// device's too: an op whose tensors sit on a GPU other than the current one (a caller that never set its device, a
// model spread over GPUs) makes that GPU current until the op returns and launches on that GPU's current stream.
class DeviceLaunch {
 public:
  explicit DeviceLaunch(c10::Device device)
      : guard_(device), stream_(c10::cuda::getCurrentCUDAStream(device.index())) {}
  cudaStream_t stream() const { return stream_.stream(); }

 private:
  c10::cuda::CUDAGuard guard_;
  c10::cuda::CUDAStream stream_;
};

}  // namespace rtp::ops
#endif
