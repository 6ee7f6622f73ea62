#pragma once
// What a run carries instead of global state: seed, device, compute dtype (and, for distributed runs,
// rank and world size). Every component that draws random numbers takes a generator seeded from here.
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace rtp {

struct RunContext {
  uint64_t seed = 1234;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  int rank = 0;
  int world_size = 1;

  // A CPU generator for this run and a stream id, so that independent consumers get independent streams.
  at::Generator generator(uint64_t stream = 0) const;
};

// "cpu", "cuda", "cuda:1", or "auto" (CUDA when available). Throws naming the value otherwise.
torch::Device parse_device(const std::string& name);
// "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16".
torch::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(torch::ScalarType t);

}  // namespace rtp
