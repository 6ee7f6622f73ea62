#include "rtp/torch/upload.h"

#include <torch/torch.h>

namespace rtp {

torch::Tensor upload_without_wait(const torch::Tensor& host, torch::Device device) {
  if (host.device() == device) return host;
  if (host.is_cpu() && device.is_cuda()) return host.pin_memory().to(device, /*non_blocking=*/true);
  return host.to(device);
}

void copy_without_wait(torch::Tensor& dst, const torch::Tensor& src) {
  dst.copy_(src.is_cpu() && dst.is_cuda() ? src.pin_memory() : src, /*non_blocking=*/true);
}

}  // namespace rtp
