#include "rtp/torch/run_context.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include "rtp/core/error.h"

namespace rtp {

at::Generator RunContext::generator(uint64_t stream) const {
  // Large odd multiplier: stream ids 0,1,2,... give well-separated seeds.
  return at::make_generator<at::CPUGeneratorImpl>(seed + stream * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(rank));
}

torch::Device parse_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  try {
    torch::Device d(name);
    if (d.is_cuda())
      RTP_CHECK(torch::cuda::is_available(), "device '", name, "' was asked for, but no CUDA device is available");
    return d;
  } catch (const c10::Error&) {
    RTP_THROW("unknown device '", name, "': expected cpu, cuda, cuda:N or auto");
  }
}

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16") return torch::kFloat16;
  RTP_THROW("unknown dtype '", name, "': expected float32, bfloat16 or float16");
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return c10::toString(t);
  }
}

}  // namespace rtp
