// Tensor I/O with a CUDA device: read_tensor places converted tensors on the GPU with the same bits as the CPU
// conversion (NaN payloads aside), and save_tensors takes (non-contiguous) GPU tensors. Label gpu: skips with a
// message without a GPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "rtp/torch/tensor_io.h"
#include "torch/tensor_io_fixtures.h"

using rtp::testing::expect_bits_equal;
using rtp::testing::expect_bits_equal_any_nan;
using rtp::testing::TempDir;
using rtp::testing::tricky_floats;

TEST(TensorIo, CudaDevicePlacement) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: GPU tensor I/O is tested on the GPU machine";
  TempDir dir;
  const torch::Tensor f32 = tricky_floats();
  rtp::save_tensors(dir / "g.safetensors", {{"x", f32.to(torch::kBFloat16)}, {"y", f32}});
  rtp::io::SafetensorsFile f(dir / "g.safetensors");
  for (auto to : {torch::kFloat32, torch::kBFloat16, torch::kFloat16})
    for (const char* n : {"x", "y"}) {
      const torch::Tensor got = rtp::read_tensor(f, f.at(n), to, torch::Device(torch::kCUDA));
      EXPECT_TRUE(got.is_cuda());
      // Reference: the same conversion by torch on the CPU.
      const torch::Tensor stored = std::string(n) == "x" ? f32.to(torch::kBFloat16) : f32;
      expect_bits_equal_any_nan(got.cpu(), stored.to(to), std::string(n) + " -> " + c10::toString(to));
    }
  // Saving from the GPU.
  rtp::save_tensors(dir / "h.safetensors", {{"x", f32.cuda().t()}});
  // Bit for bit: no conversion on this path (torch::equal would fail on the NaNs).
  expect_bits_equal(rtp::read_all_tensors(dir / "h.safetensors")[0].second, f32.t().contiguous(), "saved from GPU");
}
