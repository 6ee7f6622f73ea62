#include "rtp/torch/tensor_io.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "rtp/core/error.h"
#include "torch/tensor_io_fixtures.h"

namespace fs = std::filesystem;
using rtp::testing::expect_bits_equal;
using rtp::testing::TempDir;
using rtp::testing::tricky_floats;

TEST(TensorIo, DTypeMapping) {
  for (auto d : {rtp::io::DType::BOOL, rtp::io::DType::U8, rtp::io::DType::I8, rtp::io::DType::I16,
                 rtp::io::DType::I32, rtp::io::DType::I64, rtp::io::DType::F16, rtp::io::DType::BF16,
                 rtp::io::DType::F32, rtp::io::DType::F64}) {
    EXPECT_EQ(rtp::to_io_dtype(rtp::to_torch_dtype(d)), d);
    EXPECT_EQ(torch::elementSize(rtp::to_torch_dtype(d)), rtp::io::dtype_size(d));
  }
  try {
    rtp::to_io_dtype(torch::kComplexFloat);
    FAIL() << "complex accepted";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ComplexFloat"), std::string::npos) << e.what();
  }
}

TEST(TensorIo, ConversionMatchesTorchExactly) {
  TempDir dir;
  const torch::Tensor f32 = tricky_floats();
  const std::vector<torch::ScalarType> types = {torch::kFloat32, torch::kBFloat16, torch::kFloat16, torch::kFloat64};
  std::vector<std::pair<std::string, torch::Tensor>> src;
  for (auto t : types) src.emplace_back(c10::toString(t), f32.to(t));
  const std::string p = dir / "conv.safetensors";
  rtp::save_tensors(p, src);
  rtp::io::SafetensorsFile f(p);
  for (const auto& [name, stored] : src) {
    const auto& info = f.at(name);
    EXPECT_EQ(info.dtype, rtp::to_io_dtype(stored.scalar_type()));
    for (auto to : types) {
      const torch::Tensor got = rtp::read_tensor(f, info, to, torch::kCPU);
      expect_bits_equal(got, stored.to(to), name + " -> " + c10::toString(to));
    }
  }
}

TEST(TensorIo, ReadAllTensorsNativeDTypes) {
  TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> src = {
      {"bool", torch::tensor({true, false, true}).reshape({3, 1})},
      {"u8", torch::arange(0, 250, 7, torch::kUInt8)},
      {"i8", torch::arange(-100, 100, 3, torch::kInt8).reshape({-1, 1})},
      {"i16", torch::full({2, 3}, -30000, torch::kInt16)},
      {"i32", torch::arange(-5, 5, torch::kInt32)},
      {"i64", torch::full({}, int64_t{1} << 40, torch::kInt64)},
      {"f16", torch::randn({4, 0, 3}).to(torch::kFloat16)},
      {"bf16", torch::randn({5, 7}).to(torch::kBFloat16)},
      {"f32", torch::randn({1})},
      {"f64", torch::randn({2, 2, 2}, torch::kFloat64)}};
  const std::string p = dir / "all.safetensors";
  rtp::save_tensors(p, src, {{"format", "pt"}});
  const auto back = rtp::read_all_tensors(p);
  ASSERT_EQ(back.size(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(back[i].first, src[i].first);
    expect_bits_equal(back[i].second, src[i].second, src[i].first);
  }
  EXPECT_EQ(rtp::io::SafetensorsFile(p).metadata().at("format"), "pt");
  EXPECT_EQ(back[5].second.dim(), 0);
}

TEST(TensorIo, SaveNonContiguous) {
  TempDir dir;
  const torch::Tensor base = torch::arange(60, torch::kFloat32).reshape({3, 4, 5});
  const torch::Tensor tr = base.transpose(0, 2);                             // 5x4x3, strided
  const torch::Tensor sl = base.index({torch::indexing::Slice(), torch::indexing::Slice(0, 4, 2)});  // step 2
  const torch::Tensor ex = torch::tensor({1.5f}).expand({4, 3});             // stride 0
  const torch::Tensor ng = torch::_neg_view(torch::arange(6, torch::kFloat32));  // negative bit set, lazily
  auto req = torch::ones({2, 2}, torch::requires_grad());
  ASSERT_FALSE(tr.is_contiguous());
  ASSERT_FALSE(sl.is_contiguous());
  ASSERT_TRUE(ng.is_neg());
  const std::string p = dir / "nc.safetensors";
  rtp::save_tensors(p, {{"tr", tr}, {"sl", sl}, {"ex", ex}, {"ng", ng}, {"req", req}});
  const auto back = rtp::read_all_tensors(p);
  ASSERT_EQ(back.size(), 5u);
  EXPECT_TRUE(torch::equal(back[0].second, tr));
  EXPECT_TRUE(torch::equal(back[1].second, sl));
  EXPECT_TRUE(torch::equal(back[2].second, ex));
  EXPECT_TRUE(torch::equal(back[3].second, ng));
  EXPECT_TRUE(torch::equal(back[4].second, req.detach()));
  EXPECT_EQ(back[0].second.sizes(), tr.sizes());
}

TEST(TensorIo, SaveRejectsBadTensors) {
  TempDir dir;
  const std::string p = dir / "bad.safetensors";
  try {
    rtp::save_tensors(p, {{"ok", torch::ones({2})}, {"cplx", torch::ones({2}, torch::kComplexFloat)}});
    FAIL() << "complex accepted";
  } catch (const rtp::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find("tensor 'cplx'"), std::string::npos) << msg;
  }
  try {
    rtp::save_tensors(p, {{"undef", torch::Tensor()}});
    FAIL() << "undefined accepted";
  } catch (const rtp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'undef'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(p));
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(TensorIo, LoadTensorChecksShape) {
  TempDir dir;
  rtp::save_tensors(dir / "model.safetensors",
                    {{"model.embed_tokens.weight", torch::randn({128, 64}).to(torch::kBFloat16)}});
  rtp::io::SafetensorsDir d(dir.path());

  const torch::Tensor ok = rtp::load_tensor(d, "model.embed_tokens.weight", {128, 64}, torch::kFloat32, torch::kCPU);
  EXPECT_EQ(ok.scalar_type(), torch::kFloat32);
  EXPECT_EQ(ok.sizes(), (std::vector<int64_t>{128, 64}));
  // An empty expected shape means "any".
  EXPECT_EQ(rtp::load_tensor(d, "model.embed_tokens.weight", {}, torch::kBFloat16, torch::kCPU).numel(), 128 * 64);

  const std::string why = "from config.json hidden_size=64, vocab_size=130";
  try {
    rtp::load_tensor(d, "model.embed_tokens.weight", {130, 64}, torch::kFloat32, torch::kCPU, why);
    FAIL() << "shape mismatch accepted";
  } catch (const rtp::Error& e) {
    const std::string msg = e.what();
    for (const std::string part : {dir.path(), std::string("'model.embed_tokens.weight'"),
                                   std::string("has shape [128, 64], expected [130, 64]"), why,
                                   dir / "model.safetensors"})
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  }
  try {
    rtp::load_tensor(d, "lm_head.weight", {130, 64}, torch::kFloat32, torch::kCPU, "untied embeddings");
    FAIL() << "missing tensor accepted";
  } catch (const rtp::Error& e) {
    const std::string msg = e.what();
    for (const std::string part : {dir.path(), std::string("'lm_head.weight' is missing"),
                                   std::string("untied embeddings")})
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
  }
}

TEST(TensorIo, ReadTensorNormalisesBoolBytes) {
  TempDir dir;
  const uint8_t raw[3] = {0, 1, 7};
  rtp::io::write_safetensors(dir / "b.safetensors", {{"b", rtp::io::DType::BOOL, {3}, raw}});
  rtp::io::SafetensorsFile f(dir / "b.safetensors");
  const torch::Tensor t = rtp::read_tensor(f, f.at("b"));
  EXPECT_EQ(t.scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(t.view(torch::kUInt8), torch::tensor({0, 1, 1}, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(rtp::read_tensor(f, f.at("b"), torch::kFloat32, torch::kCPU), torch::tensor({0.f, 1.f, 1.f})));
}

// TensorIo.CudaDevicePlacement (reading onto and saving from a GPU) is in tensor_io_gpu_test.cpp (label gpu).
