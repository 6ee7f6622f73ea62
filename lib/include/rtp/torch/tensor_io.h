#pragma once
// Between torch tensors and safetensors files (rtp/io/safetensors.h). Reading copies out of the mapping (the
// tensor owns its memory; the file may be closed afterwards); writing accepts tensors on any device, of any
// layout, and is atomic.
#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "rtp/io/safetensors.h"

namespace rtp {

// Throws rtp::Error naming the dtype for those safetensors cannot hold here (complex, quantized, ...).
io::DType to_io_dtype(torch::ScalarType);
torch::ScalarType to_torch_dtype(io::DType);

// Copies out of the mapping, converting bf16/fp16/fp32/... to `dtype` (exactly as torch's Tensor::to does),
// placed on `device`.
torch::Tensor read_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, torch::ScalarType dtype,
                          torch::Device device);
// Same, in the tensor's own dtype.
torch::Tensor read_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, torch::Device device = torch::kCPU);

// Looks the tensor up; if absent: rtp::Error naming dir, tensor and `why`. If expected_shape is non-empty and
// differs: rtp::Error naming dir, file, tensor, expected and found shapes and the `why` text
// (e.g. "from config.json hidden_size=64, vocab_size=128").
torch::Tensor load_tensor(const io::SafetensorsDir& dir, const std::string& name,
                          const std::vector<int64_t>& expected_shape, torch::ScalarType dtype, torch::Device device,
                          const std::string& why = "");

// Every tensor of one file, in header order, in its native dtype.
std::vector<std::pair<std::string, torch::Tensor>> read_all_tensors(const std::string& path,
                                                                    torch::Device device = torch::kCPU);

// Any device, any contiguity (copied to contiguous CPU memory first); atomic. Tensors in the order given.
void save_tensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace rtp
