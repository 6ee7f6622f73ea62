#include "rtp/torch/tensor_io.h"

#include <torch/torch.h>

#include <cstring>

#include "rtp/core/error.h"

namespace rtp {

io::DType to_io_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kBool: return io::DType::BOOL;
    case torch::kUInt8: return io::DType::U8;
    case torch::kInt8: return io::DType::I8;
    case torch::kInt16: return io::DType::I16;
    case torch::kInt32: return io::DType::I32;
    case torch::kInt64: return io::DType::I64;
    case torch::kFloat16: return io::DType::F16;
    case torch::kBFloat16: return io::DType::BF16;
    case torch::kFloat32: return io::DType::F32;
    case torch::kFloat64: return io::DType::F64;
    default: break;
  }
  RTP_THROW("torch dtype ", c10::toString(t), " has no safetensors dtype here (supported: bool, uint8, int8, int16, ",
            "int32, int64, float16, bfloat16, float32, float64)");
}

torch::ScalarType to_torch_dtype(io::DType d) {
  switch (d) {
    case io::DType::BOOL: return torch::kBool;
    case io::DType::U8: return torch::kUInt8;
    case io::DType::I8: return torch::kInt8;
    case io::DType::I16: return torch::kInt16;
    case io::DType::I32: return torch::kInt32;
    case io::DType::I64: return torch::kInt64;
    case io::DType::F16: return torch::kFloat16;
    case io::DType::BF16: return torch::kBFloat16;
    case io::DType::F32: return torch::kFloat32;
    case io::DType::F64: return torch::kFloat64;
  }
  RTP_THROW("invalid rtp::io::DType value ", static_cast<int>(d));
}

torch::Tensor read_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, torch::ScalarType dtype,
                          torch::Device device) {
  const torch::ScalarType src = to_torch_dtype(t.dtype);
  const int64_t numel = t.numel();
  const uint64_t nbytes = static_cast<uint64_t>(numel) * io::dtype_size(t.dtype);
  RTP_CHECK(nbytes == t.nbytes(), "'", f.path(), "': tensor '", t.name, "': shape ", io::shape_to_string(t.shape),
            " of ", io::dtype_name(t.dtype), " needs ", nbytes, " bytes, but data_offsets hold ", t.nbytes());
  const void* data = f.data(t);  // checks the offsets against the file
  torch::Tensor cpu = torch::empty(t.shape, torch::TensorOptions().dtype(src).device(torch::kCPU));
  if (nbytes) std::memcpy(cpu.data_ptr(), data, static_cast<size_t>(nbytes));
  if (src == torch::kBool) {
    // Bytes other than 0/1 in a bool tensor are undefined behaviour for torch; normalise them.
    cpu = cpu.view(torch::kUInt8).ne(0);
  }
  // Narrow on the CPU before a transfer, widen after it: the fewest bytes cross the bus.
  const bool narrowing = torch::elementSize(dtype) < torch::elementSize(src);
  if (device.is_cpu() || narrowing) return cpu.to(dtype).to(device);
  return cpu.to(device).to(dtype);
}

torch::Tensor read_tensor(const io::SafetensorsFile& f, const io::TensorInfo& t, torch::Device device) {
  return read_tensor(f, t, to_torch_dtype(t.dtype), device);
}

torch::Tensor load_tensor(const io::SafetensorsDir& dir, const std::string& name,
                          const std::vector<int64_t>& expected_shape, torch::ScalarType dtype, torch::Device device,
                          const std::string& why) {
  const std::string because = why.empty() ? std::string() : str_cat(" (", why, ")");
  auto [file, info] = dir.find(name);
  if (!file) {
    RTP_THROW("'", dir.dir(), "': tensor '", name, "' is missing", because, "; the checkpoint holds ", dir.size(),
              " tensors", io::closest_names_hint(name, dir.names()));
  }
  RTP_CHECK(expected_shape.empty() || info->shape == expected_shape, "'", dir.dir(), "': tensor '", name, "' (in '",
            file->path(), "') has shape ", io::shape_to_string(info->shape), ", expected ",
            io::shape_to_string(expected_shape), because);
  return read_tensor(*file, *info, dtype, device);
}

std::vector<std::pair<std::string, torch::Tensor>> read_all_tensors(const std::string& path, torch::Device device) {
  io::SafetensorsFile f(path);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(f.tensors().size());
  for (const auto& t : f.tensors()) out.emplace_back(t.name, read_tensor(f, t, device));
  return out;
}

void save_tensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> owned;  // keeps the contiguous CPU copies alive until written
  std::vector<io::TensorToWrite> ts;
  owned.reserve(tensors.size());
  ts.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    RTP_CHECK(t.defined(), "writing '", path, "': tensor '", name, "' is undefined");
    RTP_CHECK(t.layout() == torch::kStrided, "writing '", path, "': tensor '", name, "' has layout ", t.layout(),
              "; expected a dense (strided) tensor");
    io::DType d;
    try {
      d = to_io_dtype(t.scalar_type());
    } catch (const Error& e) {
      RTP_THROW("writing '", path, "': tensor '", name, "': ", e.what());
    }
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    if (c.is_neg()) c = c.resolve_neg();
    if (c.is_conj()) c = c.resolve_conj();
    owned.push_back(c);
    ts.push_back({name, d, c.sizes().vec(), c.numel() ? c.data_ptr() : nullptr});
  }
  io::write_safetensors(path, ts, metadata);
}

}  // namespace rtp
