#pragma once
// The safetensors format (https://github.com/huggingface/safetensors), without torch:
//   [u64 little-endian N][N bytes of JSON header, space-padded][data section]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// section) and may hold "__metadata__": {string: string}.
//
// Reading memory-maps the file and validates the whole header on open, so that a file that opens is safe to
// index: every tensor lies inside the data section, has exactly numel * dtype_size bytes, and no two tensors
// overlap. Anything else is an rtp::Error naming the file, the tensor, what was expected and what was found.
// Writing is atomic (temporary file + rename).
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace rtp::io {

enum class DType { BOOL, U8, I8, I16, I32, I64, F16, BF16, F32, F64 };

size_t dtype_size(DType);
std::string dtype_name(DType);  // "BF16", as in the safetensors header
// Parses a header dtype string ("F32", ...). Returns false for strings this toolkit does not support.
bool parse_dtype_name(const std::string& s, DType* out);

// The largest header we accept (the reference implementation's limit).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t offset_begin = 0, offset_end = 0;  // relative to the data section, as in the header
  int64_t numel() const;
  uint64_t nbytes() const { return offset_end - offset_begin; }
};

// "[2, 3, 4]" ("[]" for a scalar).
std::string shape_to_string(const std::vector<int64_t>& shape);

// memory-maps the file (read-only, MAP_PRIVATE) and validates the header fully on open
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in header order
  const TensorInfo* find(const std::string& name) const;               // nullptr if absent
  const TensorInfo& at(const std::string& name) const;                 // throws rtp::Error naming file and tensor
  // Pointer into the mapping (not necessarily aligned: the format does not require it). Throws if `t`'s offsets
  // do not lie inside this file's data section.
  const void* data(const TensorInfo& t) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // "__metadata__"

  uint64_t file_size() const { return size_; }
  uint64_t header_size() const { return header_size_; }  // N, the JSON header's length incl. padding
  uint64_t data_size() const { return size_ - 8 - header_size_; }

 private:
  void unmap() noexcept;
  void parse_header();

  std::string path_;
  const unsigned char* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t header_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face checkpoint directory: model.safetensors.index.json (weight_map -> shard files) if present,
// else every *.safetensors in the directory. Shards are opened (and their headers validated) eagerly, on
// construction. A tensor named in two shards, an index entry whose shard lacks it, or an index naming a shard
// that does not exist is an error. Tensors a shard holds beyond the index are available too.
class SafetensorsDir {
 public:
  explicit SafetensorsDir(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws rtp::Error "'<dir>': tensor '<name>' is missing ..." (with the closest names present) if absent.
  std::pair<const SafetensorsFile*, const TensorInfo*> at(const std::string& name) const;
  // Like at(), but nullptrs if absent.
  std::pair<const SafetensorsFile*, const TensorInfo*> find(const std::string& name) const;
  // The opened shard files, in the order opened (index order of first appearance, or sorted file names).
  std::vector<const SafetensorsFile*> files() const;
  size_t size() const { return where_.size(); }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorInfo*>> where_;  // name -> (file index, info)
};

// A message listing the names in `names` closest to `name` (longest common prefix), for "is missing" errors:
// " (closest present: 'a', 'b')" or "" when `names` is empty.
std::string closest_names_hint(const std::string& name, const std::vector<std::string>& names, size_t max = 3);

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * dtype_size bytes, native (little-endian) byte order; may be null if empty
};

// Atomic: writes <path>.tmp.* then renames (rtp::temporary_path_for / commit_temporary in file_io.h).
// Header padded with spaces to a multiple of 8 bytes; "__metadata__" first (only if non-empty); tensors in the
// order given; offsets contiguous from 0. Duplicate or empty names, the name "__metadata__", negative dims and
// null data for a non-empty tensor are errors; nothing is written then.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rtp::io
