#pragma once
// Small host tensors (a prompt chunk's ids, a layer's head rows) onto a GPU without waiting for its queue. An
// ordinary .to(device) from pageable memory is a blocking copy: the host waits until the device has finished
// everything queued before it, and the device then idles until the host queues more.
#include <torch/types.h>

namespace rtp {

// `host` on `device`: through pinned memory by an asynchronous copy where `host` is on the CPU and `device` a GPU
// (the pinned block is held until the copy has run), otherwise an ordinary .to(device).
torch::Tensor upload_without_wait(const torch::Tensor& host, torch::Device device);

// dst.copy_(src) where dst is a GPU buffer (a captured graph's input): a host src through pinned memory by an
// asynchronous copy, any other src as copy_ does.
void copy_without_wait(torch::Tensor& dst, const torch::Tensor& src);

}  // namespace rtp
