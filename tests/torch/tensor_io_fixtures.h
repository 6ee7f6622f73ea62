#pragma once
// Helpers shared by tensor_io_test (CPU) and tensor_io_gpu_test (CUDA): a scratch directory, bitwise tensor
// equality, and float32 values that exercise dtype conversion.
#include <ftw.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace rtp::testing {

// A directory unique to this process and object, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = (std::filesystem::temp_directory_path() /
             ("rtp_tio_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd())))
                .string();
    std::filesystem::create_directories(path_);
  }
  // Not std::filesystem::remove_all: the libtorch.so of the torch 2.11 wheel exports its own std::filesystem
  // symbols, and its remove_all jumps to address 0 in any binary linked with it.
  ~TempDir() {
    ::nftw(path_.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
           FTW_DEPTH | FTW_PHYS);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Bitwise equality (NaN payloads included) of two tensors of the same dtype and shape.
inline void expect_bits_equal(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  auto ab = a.contiguous().reshape({-1}).view(torch::kUInt8);
  auto bb = b.contiguous().reshape({-1}).view(torch::kUInt8);
  EXPECT_TRUE(torch::equal(ab, bb)) << what;
}

// Bitwise equality except inside NaNs, which must be NaN in both: a CUDA conversion writes the canonical NaN where
// the CPU's keeps the sign and payload (a NaN weight is broken either way; its bits carry nothing).
inline void expect_bits_equal_any_nan(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const auto nan_a = torch::isnan(a), nan_b = torch::isnan(b);
  EXPECT_TRUE(torch::equal(nan_a, nan_b)) << what << ": NaN at different places";
  const auto keep = nan_a.logical_not().reshape({-1});
  EXPECT_GT(nan_a.sum().item<int64_t>(), 0) << what << ": the values hold no NaN to test";
  expect_bits_equal(a.reshape({-1}).index({keep}), b.reshape({-1}).index({keep}), what + " (NaN excluded)");
}

// Float32 values that exercise rounding: random normals at several scales, ties, subnormals, infinities, NaN, values
// that overflow fp16, and values near bf16/fp16 rounding boundaries.
inline torch::Tensor tricky_floats() {
  torch::manual_seed(3);
  std::vector<torch::Tensor> parts = {torch::randn({1000}), torch::randn({500}) * 1e4, torch::randn({500}) * 1e-6,
                                      torch::randn({200}) * 1e30};
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> special = {0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                                std::numeric_limits<float>::denorm_min(), 1e-40f, 65504.f, 65520.f, 1e6f,
                                1.00390625f /*bf16 tie*/, 1.0048828125f /*fp16 tie*/, 5.96e-8f, 3e-8f,
                                std::numeric_limits<float>::max()};
  parts.push_back(torch::tensor(special));
  // Every bit pattern whose low 16 bits sit at the bf16 rounding boundary.
  auto bits = torch::randint(0, 1 << 16, {512}, torch::kInt32).bitwise_left_shift(16).bitwise_or(0x8000);
  parts.push_back(bits.view(torch::kFloat32));
  return torch::cat(parts).reshape({-1, 9});  // 2727 = 303 * 9
}

}  // namespace rtp::testing
