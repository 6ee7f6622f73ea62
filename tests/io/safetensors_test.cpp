#include "rtp/io/safetensors.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using rtp::io::DType;
using rtp::io::SafetensorsDir;
using rtp::io::SafetensorsFile;
using rtp::io::TensorToWrite;
using rtp::testing::error_of;

namespace {

const std::vector<DType> kAll = {DType::BOOL, DType::U8,  DType::I8,   DType::I16, DType::I32,
                                 DType::I64,  DType::F16, DType::BF16, DType::F32, DType::F64};

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = (fs::temp_directory_path() / ("rtp_st_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd())))
                .string();
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A hand-built file: length prefix, the given header text (unpadded), then `data`.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  write_bytes(path, le64(header.size()) + header + data);
}

// Expects constructing a SafetensorsFile on `path` to throw rtp::Error whose message contains each of `parts`.
void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "opening '" << path << "' did not throw";
  } catch (const rtp::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
  }
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string bytes_of(const SafetensorsFile& f, const rtp::io::TensorInfo& t) {
  return std::string(static_cast<const char*>(f.data(t)), t.nbytes());
}

}  // namespace

TEST(Safetensors, DTypeNamesAndSizes) {
  const std::vector<std::pair<std::string, size_t>> want = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},   {"I16", 2},
                                                            {"I32", 4},  {"I64", 8}, {"F16", 2},  {"BF16", 2},
                                                            {"F32", 4},  {"F64", 8}};
  ASSERT_EQ(want.size(), kAll.size());
  for (size_t i = 0; i < kAll.size(); ++i) {
    EXPECT_EQ(rtp::io::dtype_name(kAll[i]), want[i].first);
    EXPECT_EQ(rtp::io::dtype_size(kAll[i]), want[i].second);
    DType d{};
    EXPECT_TRUE(rtp::io::parse_dtype_name(want[i].first, &d));
    EXPECT_EQ(d, kAll[i]);
  }
  EXPECT_FALSE(rtp::io::parse_dtype_name("bf16", nullptr));
}

TEST(Safetensors, RoundTripEveryDTypeAndOddShapes) {
  TempDir dir;
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {1}, {7}, {3, 0, 2}, {3, 5}, {2, 3, 5}, {1, 1, 1, 3}};
  std::mt19937 rng(42);
  std::vector<std::string> buffers;
  std::vector<TensorToWrite> ts;
  for (DType d : kAll) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      int64_t numel = 1;
      for (int64_t x : shapes[s]) numel *= x;
      std::string buf(static_cast<size_t>(numel) * rtp::io::dtype_size(d), '\0');
      for (auto& c : buf) c = static_cast<char>(d == DType::BOOL ? rng() % 2 : rng() % 256);
      buffers.push_back(std::move(buf));
      ts.push_back({rtp::io::dtype_name(d) + ".s" + std::to_string(s), d, shapes[s], nullptr});
    }
  }
  for (size_t i = 0; i < ts.size(); ++i) ts[i].data = buffers[i].empty() ? nullptr : buffers[i].data();
  const std::string path = dir / "all.safetensors";
  rtp::io::write_safetensors(path, ts);

  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_TRUE(f.metadata().empty());
  ASSERT_EQ(f.tensors().size(), ts.size());
  EXPECT_EQ(f.header_size() % 8, 0u);
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& t = f.tensors()[i];  // header order == order given
    EXPECT_EQ(t.name, ts[i].name);
    EXPECT_EQ(t.dtype, ts[i].dtype) << t.name;
    EXPECT_EQ(t.shape, ts[i].shape) << t.name;
    EXPECT_EQ(t.offset_begin, expected_offset) << t.name;
    expected_offset = t.offset_end;
    EXPECT_EQ(t.numel() * static_cast<int64_t>(rtp::io::dtype_size(t.dtype)), static_cast<int64_t>(t.nbytes()));
    EXPECT_EQ(bytes_of(f, t), buffers[i]) << t.name;
    EXPECT_EQ(f.find(t.name), &t);
    EXPECT_EQ(&f.at(t.name), &t);
  }
  EXPECT_EQ(f.data_size(), expected_offset);
  EXPECT_EQ(f.find("nope"), nullptr);
  const std::string msg = error_of([&] { f.at("F32.s9"); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("'F32.s9'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;

  // Movable: the moved-to object keeps the mapping valid.
  SafetensorsFile g(std::move(f));
  const size_t k = 5 * shapes.size() + 5;  // I64, shape {3, 5}
  EXPECT_EQ(g.at(ts[k].name).name, "I64.s5");
  EXPECT_EQ(bytes_of(g, g.at("I64.s5")), buffers[k]);
}

TEST(Safetensors, MoveKeepsMapping) {
  TempDir dir;
  const float v[3] = {1.5f, -2.f, 3.25f};
  rtp::io::write_safetensors(dir / "m.safetensors", {{"v", DType::F32, {3}, v}});
  SafetensorsFile a(dir / "m.safetensors");
  SafetensorsFile b(std::move(a));
  EXPECT_EQ(std::memcmp(b.data(b.at("v")), v, sizeof v), 0);
  SafetensorsFile c(dir / "m.safetensors");
  c = std::move(b);
  EXPECT_EQ(std::memcmp(c.data(c.at("v")), v, sizeof v), 0);
}

TEST(Safetensors, MetadataRoundTrip) {
  TempDir dir;
  const std::map<std::string, std::string> md = {
      {"format", "pt"}, {"empty", ""}, {"unicode", "h\xc3\xa9llo \xe2\x9c\x93"}, {"quote\"s", "a\\b\n{\"x\":1}"}};
  const int32_t x = 7;
  rtp::io::write_safetensors(dir / "md.safetensors", {{"x", DType::I32, {}, &x}}, md);
  SafetensorsFile f(dir / "md.safetensors");
  EXPECT_EQ(f.metadata(), md);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_TRUE(f.tensors()[0].shape.empty());
  EXPECT_EQ(f.tensors()[0].numel(), 1);
  EXPECT_EQ(*static_cast<const int32_t*>(f.data(f.tensors()[0])), 7);

  // No metadata and no tensors at all: a valid, empty file.
  rtp::io::write_safetensors(dir / "empty.safetensors", {});
  SafetensorsFile e(dir / "empty.safetensors");
  EXPECT_TRUE(e.tensors().empty());
  EXPECT_TRUE(e.metadata().empty());
}

TEST(Safetensors, ByteExactLayout) {
  TempDir dir;
  const float a[2] = {1.0f, 2.0f};            // 00 00 80 3f, 00 00 00 40
  const uint8_t b[3] = {1, 2, 3};
  const std::string path = dir / "exact.safetensors";
  rtp::io::write_safetensors(path, {{"a", DType::F32, {2}, a}, {"b", DType::U8, {1, 3}, b}}, {{"format", "pt"}});

  const std::string json =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[1,3],"data_offsets":[8,11]}})";
  ASSERT_EQ(json.size(), 140u);  // padded with 4 spaces to 144 = 0x90
  std::string expected;
  expected += std::string("\x90\x00\x00\x00\x00\x00\x00\x00", 8);
  expected += json + "    ";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);
  expected += std::string("\x01\x02\x03", 3);
  EXPECT_EQ(rtp::read_text_file(path), expected);

  // A header that is already a multiple of 8 gets no padding: {"t":{"dtype":"I8","shape":[],"data_offsets":[0,1]}}
  const int8_t t = -1;
  rtp::io::write_safetensors(dir / "t.safetensors", {{"t", DType::I8, {}, &t}});
  const std::string json2 = R"({"t":{"dtype":"I8","shape":[],"data_offsets":[0,1]}})";
  ASSERT_EQ(json2.size(), 52u);  // 52 -> padded to 56
  EXPECT_EQ(rtp::read_text_file(dir / "t.safetensors"),
            std::string("\x38\0\0\0\0\0\0\0", 8) + json2 + "    " + std::string("\xff", 1));
}

// ---- hostile input -------------------------------------------------------------------------------------------

TEST(SafetensorsBadInput, MissingFile) {
  TempDir dir;
  expect_open_error(dir / "absent.safetensors", {dir / "absent.safetensors", "cannot open"});
}

TEST(SafetensorsBadInput, ShorterThan8Bytes) {
  TempDir dir;
  for (size_t n : {0, 1, 5, 7}) {
    const std::string p = dir / ("short" + std::to_string(n));
    write_bytes(p, std::string(n, '\x01'));
    expect_open_error(p, {p, "at least 8 bytes", "found " + std::to_string(n) + " bytes"});
  }
}

TEST(SafetensorsBadInput, HeaderLengthPastEndOfFile) {
  TempDir dir;
  const std::string p = dir / "past.safetensors";
  write_bytes(p, le64(100) + "{}");
  expect_open_error(p, {p, "header length 100", "past the end of the file (10 bytes"});
  // Exactly up to the end is fine: an empty header object.
  write_bytes(p, le64(2) + "{}");
  EXPECT_NO_THROW(SafetensorsFile f(p));
}

TEST(SafetensorsBadInput, HeaderLengthAbsurd) {
  TempDir dir;
  const std::string p = dir / "absurd.safetensors";
  for (uint64_t n : {uint64_t{100'000'001}, uint64_t{1} << 63, ~uint64_t{0}, ~uint64_t{0} - 7}) {
    write_bytes(p, le64(n) + "{}");
    expect_open_error(p, {p, "header length " + std::to_string(n), "absurdly large"});
  }
}

TEST(SafetensorsBadInput, HeaderNotJson) {
  TempDir dir;
  const std::string p = dir / "notjson.safetensors";
  write_raw(p, "{\"a\": {\"dtype\": ", "");
  expect_open_error(p, {p, "not valid JSON"});
  write_raw(p, std::string("\xff\xfe{}", 4), "");
  expect_open_error(p, {p, "not valid JSON"});
}

TEST(SafetensorsBadInput, HeaderNotAnObject) {
  TempDir dir;
  const std::string p = dir / "array.safetensors";
  for (const std::string h : {"[1, 2]", "\"str\"", "42", "null"}) {
    write_raw(p, h, "");
    expect_open_error(p, {p, "must be a JSON object"});
  }
}

TEST(SafetensorsBadInput, EntryNotAnObject) {
  TempDir dir;
  const std::string p = dir / "entry.safetensors";
  write_raw(p, R"({"w": [1,2,3]})", "");
  expect_open_error(p, {p, "tensor 'w'", "expected an object"});
}

TEST(SafetensorsBadInput, MissingFields) {
  TempDir dir;
  const std::string p = dir / "fields.safetensors";
  write_raw(p, R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "missing \"dtype\""});
  write_raw(p, R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "missing \"shape\""});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2]}})", std::string(8, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "missing \"data_offsets\""});
}

TEST(SafetensorsBadInput, UnknownDType) {
  TempDir dir;
  const std::string p = dir / "dtype.safetensors";
  write_raw(p, R"({"w": {"dtype": "F17", "shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "unknown dtype \"F17\"", "BF16"});
  write_raw(p, R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "\"dtype\" must be a string"});
}

TEST(SafetensorsBadInput, BadShapeEntries) {
  TempDir dir;
  const std::string p = dir / "shape.safetensors";
  const std::string d8(8, '\0');
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "shape entry 0 is negative (-2)"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [1, 2.0], "data_offsets": [0, 8]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "shape entry 1 must be a non-negative integer", "2.0"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "shape entry 0 must be a non-negative integer", "string"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "\"shape\" must be an array"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 8]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "larger than 2^63-1"});
}

TEST(SafetensorsBadInput, ShapeProductOverflow) {
  TempDir dir;
  const std::string p = dir / "overflow.safetensors";
  // 2^32 * 2^32 = 2^64 wraps to 0 in uint64; must be caught, not accepted as an empty tensor.
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", "");
  expect_open_error(p, {p, "tensor 'w'", "more than 2^63-1 elements"});
  // numel fits int64 but numel * 8 bytes overflows uint64.
  write_raw(p, R"({"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", "");
  expect_open_error(p, {p, "tensor 'w'", "more than 2^64"});
  // A zero dim makes the product 0 even with huge other dims; that is a valid empty tensor.
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [9223372036854775807, 0], "data_offsets": [0, 0]}})", "");
  SafetensorsFile f(p);
  EXPECT_EQ(f.at("w").numel(), 0);
}

TEST(SafetensorsBadInput, BadDataOffsets) {
  TempDir dir;
  const std::string p = dir / "offsets.safetensors";
  const std::string d8(8, '\0');
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "[8, 0]", "begin > end"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "[4, 12]", "past the end of the data section (8 bytes)"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "must be [begin, end]"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-1, 7]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "data_offsets[0] must be a non-negative integer"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.5]}})", d8);
  expect_open_error(p, {p, "tensor 'w'", "data_offsets[1] must be a non-negative integer"});
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551615, 18446744073709551615]}})",
            d8);
  expect_open_error(p, {p, "tensor 'w'", "past the end of the data section"});
}

TEST(SafetensorsBadInput, OverlappingTensors) {
  TempDir dir;
  const std::string p = dir / "overlap.safetensors";
  write_raw(p,
            R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
            R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
            std::string(12, '\0'));
  expect_open_error(p, {p, "tensors 'a'", "'b'", "overlap"});
  // One tensor inside another, listed in the other order.
  write_raw(p,
            R"({"in": {"dtype": "U8", "shape": [2], "data_offsets": [3, 5]},)"
            R"( "out": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}})",
            std::string(8, '\0'));
  expect_open_error(p, {p, "'out'", "'in'", "overlap"});
  // Empty tensors may sit anywhere, even at another's offset.
  write_raw(p,
            R"({"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},)"
            R"( "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]}})",
            std::string(8, '\0'));
  EXPECT_NO_THROW(SafetensorsFile f(p));
}

TEST(SafetensorsBadInput, SizeMismatch) {
  TempDir dir;
  const std::string p = dir / "size.safetensors";
  write_raw(p, R"({"w": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}})", std::string(16, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "shape [3, 2] of BF16 needs 12 bytes", "hold 8 bytes"});
}

TEST(SafetensorsBadInput, MetadataAndDuplicates) {
  TempDir dir;
  const std::string p = dir / "md.safetensors";
  write_raw(p, R"({"__metadata__": {"format": 1}})", "");
  expect_open_error(p, {p, "__metadata__", "'format'", "must be a string"});
  write_raw(p, R"({"__metadata__": ["x"]})", "");
  expect_open_error(p, {p, "__metadata__", "must be an object"});
  write_raw(p,
            R"({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},)"
            R"( "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
            std::string(2, '\0'));
  expect_open_error(p, {p, "tensor 'w'", "appears twice"});
}

TEST(SafetensorsBadInput, DataOfForeignTensorIsChecked) {
  TempDir dir;
  const uint8_t b[4] = {1, 2, 3, 4};
  rtp::io::write_safetensors(dir / "x.safetensors", {{"x", DType::U8, {4}, b}});
  SafetensorsFile f(dir / "x.safetensors");
  rtp::io::TensorInfo fake = f.at("x");
  fake.offset_end = 1000;
  const std::string msg = error_of([&] { f.data(fake); });
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
}

// Random corruption of a valid file: every variant either opens (and then every tensor lies inside the data
// section) or throws rtp::Error. A crash or sanitizer report fails the test.
TEST(SafetensorsBadInput, FuzzedFilesNeverCrash) {
  TempDir dir;
  std::vector<float> a(6, 1.f);
  std::vector<uint16_t> b(4, 7);
  const std::string good = dir / "good.safetensors";
  rtp::io::write_safetensors(good, {{"a", DType::F32, {2, 3}, a.data()}, {"b", DType::BF16, {4}, b.data()}},
                             {{"k", "v"}});
  const std::string bytes = rtp::read_text_file(good);
  std::mt19937 rng(7);
  const std::string p = dir / "fuzz.safetensors";
  int opened = 0, rejected = 0;
  auto check = [&](const std::string& variant) {
    write_bytes(p, variant);
    try {
      SafetensorsFile f(p);
      for (const auto& t : f.tensors()) {
        ASSERT_LE(t.offset_end, f.data_size());
        volatile char sink = 0;
        const char* d = static_cast<const char*>(f.data(t));
        for (uint64_t i = 0; i < t.nbytes(); ++i) sink = static_cast<char>(sink ^ d[i]);
      }
      ++opened;
    } catch (const rtp::Error&) {
      ++rejected;
    }
  };
  for (size_t n = 0; n < bytes.size(); ++n) check(bytes.substr(0, n));  // every truncation
  const char alphabet[] = "{}[]\":,0123456789-.eE \x00\xff";
  for (int i = 0; i < 1500; ++i) {
    std::string v = bytes;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % std::min<size_t>(v.size(), 8 + 96);  // mostly the length and the header
      v[pos] = alphabet[rng() % (sizeof alphabet - 1)];
    }
    check(v);
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(opened, 0);
}

// ---- directories ---------------------------------------------------------------------------------------------

namespace {
void write_u8(const std::string& path, const std::vector<std::string>& names) {
  static const uint8_t bytes[2] = {5, 6};
  std::vector<TensorToWrite> ts;
  for (const auto& n : names) ts.push_back({n, DType::U8, {2}, bytes});
  rtp::io::write_safetensors(path, ts);
}
void write_index(const std::string& dir, const std::map<std::string, std::string>& weight_map) {
  nlohmann::json j;
  j["metadata"] = {{"total_size", 0}};
  j["weight_map"] = weight_map;
  rtp::write_json_atomic((fs::path(dir) / "model.safetensors.index.json").string(), j);
}
}  // namespace

TEST(SafetensorsDir, SingleFile) {
  TempDir dir;
  write_u8(dir / "model.safetensors", {"model.embed_tokens.weight", "lm_head.weight"});
  write_bytes(dir / "config.json", "{}");  // ignored
  SafetensorsDir d(dir.path());
  EXPECT_EQ(d.dir(), dir.path());
  EXPECT_EQ(d.names(), (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight"}));
  EXPECT_TRUE(d.contains("lm_head.weight"));
  EXPECT_FALSE(d.contains("lm_head"));
  auto [f, t] = d.at("lm_head.weight");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->path(), dir / "model.safetensors");
  EXPECT_EQ(static_cast<const uint8_t*>(f->data(*t))[1], 6);
  EXPECT_EQ(d.files().size(), 1u);
  EXPECT_EQ(d.find("x").first, nullptr);

  const std::string msg = error_of([&] { d.at("model.embed_token.weight"); });
  EXPECT_NE(msg.find("'" + dir.path() + "': tensor 'model.embed_token.weight' is missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("closest present: 'model.embed_tokens.weight'"), std::string::npos) << msg;
}

TEST(SafetensorsDir, ShardedWithIndex) {
  TempDir dir;
  write_u8(dir / "model-00001-of-00002.safetensors", {"a.weight", "b.weight"});
  write_u8(dir / "model-00002-of-00002.safetensors", {"c.weight"});
  write_u8(dir / "stray.safetensors", {"a.weight"});  // not in the index: must not be opened
  write_index(dir.path(), {{"a.weight", "model-00001-of-00002.safetensors"},
                           {"b.weight", "model-00001-of-00002.safetensors"},
                           {"c.weight", "model-00002-of-00002.safetensors"}});
  SafetensorsDir d(dir.path());
  EXPECT_EQ(d.names(), (std::vector<std::string>{"a.weight", "b.weight", "c.weight"}));
  EXPECT_EQ(d.files().size(), 2u);
  EXPECT_EQ(d.at("c.weight").first->path(), dir / "model-00002-of-00002.safetensors");
  EXPECT_EQ(d.at("a.weight").first->path(), dir / "model-00001-of-00002.safetensors");
}

TEST(SafetensorsDir, IndexNamesMissingShard) {
  TempDir dir;
  write_u8(dir / "model-00001-of-00002.safetensors", {"a.weight"});
  write_index(dir.path(), {{"a.weight", "model-00001-of-00002.safetensors"},
                           {"z.weight", "model-00002-of-00002.safetensors"}});
  const std::string msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find(dir.path()), std::string::npos) << msg;
  EXPECT_NE(msg.find("shard 'model-00002-of-00002.safetensors'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'z.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(SafetensorsDir, IndexEntryMissingFromShard) {
  TempDir dir;
  write_u8(dir / "s1.safetensors", {"a.weight"});
  write_u8(dir / "s2.safetensors", {"b.weight"});
  write_index(dir.path(), {{"a.weight", "s1.safetensors"}, {"b.weight", "s1.safetensors"}});
  std::string msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find(dir.path()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'b.weight' is in shard 's1.safetensors', but that shard lacks it"), std::string::npos)
      << msg;
  // Listed in the right place but also present in another indexed shard.
  write_u8(dir / "s2.safetensors", {"b.weight", "a.weight"});
  write_index(dir.path(), {{"a.weight", "s1.safetensors"}, {"b.weight", "s2.safetensors"}});
  msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find("tensor 'a.weight' appears in two shards"), std::string::npos) << msg;
}

TEST(SafetensorsDir, TensorInTwoFilesWithoutIndex) {
  TempDir dir;
  write_u8(dir / "x.safetensors", {"a", "b"});
  write_u8(dir / "y.safetensors", {"b"});
  const std::string msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find("tensor 'b' appears in two shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir / "x.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir / "y.safetensors"), std::string::npos) << msg;
}

TEST(SafetensorsDir, BadDirectories) {
  TempDir dir;
  std::string msg = error_of([&] { SafetensorsDir d(dir / "nope"); });
  EXPECT_NE(msg.find(dir / "nope"), std::string::npos) << msg;
  msg = error_of([&] { SafetensorsDir d(dir.path()); });  // empty
  EXPECT_NE(msg.find("no *.safetensors"), std::string::npos) << msg;
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "../evil.safetensors"}})");
  msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find("'../evil.safetensors'"), std::string::npos) << msg;
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": [1]})");
  msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find("weight_map"), std::string::npos) << msg;
  // A corrupt shard names the shard file.
  fs::remove(dir / "model.safetensors.index.json");
  write_bytes(dir / "bad.safetensors", "xyz");
  msg = error_of([&] { SafetensorsDir d(dir.path()); });
  EXPECT_NE(msg.find(dir / "bad.safetensors"), std::string::npos) << msg;
}

// ---- atomic writes -------------------------------------------------------------------------------------------

TEST(SafetensorsWrite, NoTempFileLeftBehind) {
  TempDir dir;
  const float v[2] = {1, 2};
  rtp::io::write_safetensors(dir / "w.safetensors", {{"v", DType::F32, {2}, v}});
  rtp::io::write_safetensors(dir / "w.safetensors", {{"v", DType::F32, {1}, v}});  // overwrite
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"w.safetensors"});
  EXPECT_EQ(SafetensorsFile(dir / "w.safetensors").at("v").shape, std::vector<int64_t>{1});
}

TEST(SafetensorsWrite, DestinationDirMissing) {
  TempDir dir;
  const float v[2] = {1, 2};
  const std::string p = dir / "sub/w.safetensors";
  const std::string msg = error_of([&] { rtp::io::write_safetensors(p, {{"v", DType::F32, {2}, v}}); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(SafetensorsWrite, FailuresLeaveDestinationUntouched) {
  TempDir dir;
  const std::string p = dir / "keep.safetensors";
  write_bytes(p, "original");
  const float v[2] = {1, 2};
  // Invalid requests are rejected before anything is written.
  std::string msg = error_of([&] { rtp::io::write_safetensors(p, {{"v", DType::F32, {2}, v}, {"v", DType::F32, {2}, v}}); });
  EXPECT_NE(msg.find("tensor 'v' given twice"), std::string::npos) << msg;
  msg = error_of([&] { rtp::io::write_safetensors(p, {{"n", DType::F32, {-1}, v}}); });
  EXPECT_NE(msg.find("tensor 'n'"), std::string::npos) << msg;
  msg = error_of([&] { rtp::io::write_safetensors(p, {{"z", DType::F32, {3}, nullptr}}); });
  EXPECT_NE(msg.find("tensor 'z'"), std::string::npos) << msg;
  msg = error_of([&] { rtp::io::write_safetensors(p, {{"__metadata__", DType::F32, {1}, v}}); });
  EXPECT_NE(msg.find("reserved"), std::string::npos) << msg;
  msg = error_of([&] { rtp::io::write_safetensors(p, {{std::string("bad\xff", 4), DType::F32, {1}, v}}); });
  EXPECT_NE(msg.find("UTF-8"), std::string::npos) << msg;
  EXPECT_EQ(rtp::read_text_file(p), "original");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"keep.safetensors"});

  // The rename fails (the destination is a directory): the temporary file is removed.
  fs::create_directories(dir / "adir/inner");
  msg = error_of([&] { rtp::io::write_safetensors(dir / "adir", {{"v", DType::F32, {2}, v}}); });
  EXPECT_NE(msg.find(dir / "adir"), std::string::npos) << msg;
  EXPECT_EQ(list_dir(dir.path()), (std::vector<std::string>{"adir", "keep.safetensors"}));
}

TEST(SafetensorsWrite, FailureMidWriteLeavesDestinationUntouched) {
  TempDir dir;
  const std::string p = dir / "keep.safetensors";
  write_bytes(p, "original");
  // Simulate a full disk: limit the file size so that write() fails with EFBIG partway through the data.
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max < 4096) GTEST_SKIP() << "RLIMIT_FSIZE hard limit too low";
  auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::vector<double> big(100000, 3.0);
  std::string msg;
  try {
    rtp::io::write_safetensors(p, {{"big", DType::F64, {100000}, big.data()}});
  } catch (const rtp::Error& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'big'"), std::string::npos) << msg;
  EXPECT_EQ(rtp::read_text_file(p), "original");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"keep.safetensors"});
}
