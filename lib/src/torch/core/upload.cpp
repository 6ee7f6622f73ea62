#include "rtp/torch/upload.h"

#include <torch/torch.h>

namespace rtp {

torch::Tensor upload_without_wait(const torch::Tensor& host, torch::Device device) {
  if (host.device() == device) return host;
  if (host.is_cpu() && device.is_cuda()) return host.pin_memory().to(device, /*non_blocking=*/true);
  return host.to(device);
}

}  // namespace rtp
