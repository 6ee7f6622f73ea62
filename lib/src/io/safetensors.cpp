#include "rtp/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader/writer assumes a little-endian host"
#endif

namespace rtp::io {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},     {DType::I8, "I8", 1},     {DType::I16, "I16", 2},
    {DType::I32, "I32", 4},   {DType::I64, "I64", 8},   {DType::F16, "F16", 2},   {DType::BF16, "BF16", 2},
    {DType::F32, "F32", 4},   {DType::F64, "F64", 8},
};

const DTypeEntry& entry_of(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e;
  RTP_THROW("invalid rtp::io::DType value ", static_cast<int>(d));
}

std::string supported_dtypes() {
  std::string s;
  for (const auto& e : kDTypes) {
    if (!s.empty()) s += ", ";
    s += e.name;
  }
  return s;
}

// product of dims * elem_size, or false on overflow of int64 (numel) / uint64 (bytes)
bool checked_numel(const std::vector<int64_t>& shape, int64_t* numel) {
  uint64_t n = 1;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d == 0) zero = true;
  }
  if (zero) {
    *numel = 0;
    return true;
  }
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
    if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  }
  *numel = static_cast<int64_t>(n);
  return true;
}

std::string json_excerpt(const ojson& j) {
  std::string s = j.dump(-1, ' ', true, ojson::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::string type_word(const ojson& j) { return j.type_name(); }

}  // namespace

size_t dtype_size(DType d) { return entry_of(d).size; }
std::string dtype_name(DType d) { return entry_of(d).name; }

bool parse_dtype_name(const std::string& s, DType* out) {
  for (const auto& e : kDTypes) {
    if (s == e.name) {
      if (out) *out = e.dtype;
      return true;
    }
  }
  return false;
}

int64_t TensorInfo::numel() const {
  int64_t n = 0;
  RTP_CHECK(checked_numel(shape, &n), "tensor '", name, "': shape ", shape_to_string(shape),
            " has negative dims or more than 2^63 elements");
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  RTP_CHECK(fd >= 0, "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    RTP_THROW("cannot stat safetensors file '", path, "': ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    RTP_THROW("'", path, "' is not a regular file (expected a safetensors file)");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    RTP_THROW("'", path, "' is not a safetensors file: expected at least 8 bytes (the header length), found ",
              size_, " bytes");
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  RTP_CHECK(p != MAP_FAILED, "cannot memory-map '", path, "' (", size_, " bytes): ", std::strerror(err));
  base_ = static_cast<const unsigned char*>(p);
  try {
    parse_header();
  } catch (...) {
    unmap();
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() noexcept {
  if (base_) ::munmap(const_cast<unsigned char*>(base_), static_cast<size_t>(size_));
  base_ = nullptr;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)),
      base_(o.base_),
      size_(o.size_),
      header_size_(o.header_size_),
      tensors_(std::move(o.tensors_)),
      index_(std::move(o.index_)),
      metadata_(std::move(o.metadata_)) {
  o.base_ = nullptr;
  o.size_ = 0;
  o.header_size_ = 0;
  o.tensors_.clear();
  o.index_.clear();
}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    unmap();
    path_ = std::move(o.path_);
    base_ = o.base_;
    size_ = o.size_;
    header_size_ = o.header_size_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
    o.base_ = nullptr;
    o.size_ = 0;
    o.header_size_ = 0;
    o.tensors_.clear();
    o.index_.clear();
  }
  return *this;
}

void SafetensorsFile::parse_header() {
  const std::string& P = path_;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];
  RTP_CHECK(n <= kMaxSafetensorsHeaderBytes, "'", P, "': header length ", n, " is absurdly large (limit ",
            kMaxSafetensorsHeaderBytes, " bytes); not a safetensors file, or a corrupt one");
  RTP_CHECK(n <= size_ - 8, "'", P, "': header length ", n, " runs past the end of the file (", size_,
            " bytes, so at most ", size_ - 8, " header bytes); the file is truncated or not a safetensors file");
  header_size_ = n;
  const char* hb = reinterpret_cast<const char*>(base_ + 8);

  // Top-level keys, to reject duplicates (the JSON parser would keep only the last).
  std::unordered_set<std::string> top_keys;
  std::string duplicate;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, ojson& parsed) -> bool {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!top_keys.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  ojson header;
  try {
    header = ojson::parse(hb, hb + n, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    RTP_THROW("'", P, "': the ", n, "-byte header is not valid JSON: ", e.what());
  }
  RTP_CHECK(header.is_object(), "'", P, "': the header must be a JSON object, found ", type_word(header), " ",
            json_excerpt(header));
  RTP_CHECK(duplicate.empty(), "'", P, "': tensor '", duplicate, "' appears twice in the header");

  const uint64_t data_size = size_ - 8 - n;
  tensors_.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const ojson& v = it.value();
    if (name == "__metadata__") {
      RTP_CHECK(v.is_object(), "'", P, "': \"__metadata__\" must be an object of strings, found ", type_word(v));
      for (auto m = v.begin(); m != v.end(); ++m) {
        RTP_CHECK(m.value().is_string(), "'", P, "': \"__metadata__\" entry '", m.key(),
                  "' must be a string, found ", type_word(m.value()), " ", json_excerpt(m.value()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string T = str_cat("'", P, "': tensor '", name, "': ");
    RTP_CHECK(v.is_object(), T, "expected an object with dtype, shape and data_offsets, found ", type_word(v), " ",
              json_excerpt(v));
    TensorInfo info;
    info.name = name;

    auto d = v.find("dtype");
    RTP_CHECK(d != v.end(), T, "missing \"dtype\" (found ", json_excerpt(v), ")");
    RTP_CHECK(d->is_string(), T, "\"dtype\" must be a string, found ", type_word(*d), " ", json_excerpt(*d));
    const std::string dstr = d->get<std::string>();
    RTP_CHECK(parse_dtype_name(dstr, &info.dtype), T, "unknown dtype \"", dstr, "\" (supported: ", supported_dtypes(),
              ")");

    auto s = v.find("shape");
    RTP_CHECK(s != v.end(), T, "missing \"shape\" (found ", json_excerpt(v), ")");
    RTP_CHECK(s->is_array(), T, "\"shape\" must be an array of non-negative integers, found ", type_word(*s), " ",
              json_excerpt(*s));
    for (size_t i = 0; i < s->size(); ++i) {
      const ojson& e = (*s)[i];
      if (e.is_number_unsigned()) {
        const uint64_t u = e.get<uint64_t>();
        RTP_CHECK(u <= static_cast<uint64_t>(INT64_MAX), T, "shape entry ", i, " is ", u, ", larger than 2^63-1");
        info.shape.push_back(static_cast<int64_t>(u));
      } else if (e.is_number_integer()) {
        RTP_THROW(T, "shape entry ", i, " is negative (", e.get<int64_t>(), "); expected a non-negative integer");
      } else {
        RTP_THROW(T, "shape entry ", i, " must be a non-negative integer, found ", type_word(e), " ",
                  json_excerpt(e));
      }
    }

    auto o = v.find("data_offsets");
    RTP_CHECK(o != v.end(), T, "missing \"data_offsets\" (found ", json_excerpt(v), ")");
    RTP_CHECK(o->is_array() && o->size() == 2, T, "\"data_offsets\" must be [begin, end], found ", json_excerpt(*o));
    for (size_t i = 0; i < 2; ++i)
      RTP_CHECK((*o)[i].is_number_unsigned(), T, "data_offsets[", i, "] must be a non-negative integer, found ",
                json_excerpt((*o)[i]));
    info.offset_begin = (*o)[0].get<uint64_t>();
    info.offset_end = (*o)[1].get<uint64_t>();
    RTP_CHECK(info.offset_begin <= info.offset_end, T, "data_offsets [", info.offset_begin, ", ", info.offset_end,
              "] have begin > end");
    RTP_CHECK(info.offset_end <= data_size, T, "data_offsets [", info.offset_begin, ", ", info.offset_end,
              "] run past the end of the data section (", data_size, " bytes); the file is truncated or corrupt");

    int64_t numel = 0;
    RTP_CHECK(checked_numel(info.shape, &numel), T, "shape ", shape_to_string(info.shape),
              " has more than 2^63-1 elements");
    uint64_t nbytes = 0;
    const bool overflow = __builtin_mul_overflow(static_cast<uint64_t>(numel), dtype_size(info.dtype), &nbytes);
    RTP_CHECK(!overflow && nbytes == info.offset_end - info.offset_begin, T, "shape ", shape_to_string(info.shape),
              " of ", dstr, " needs ", (overflow ? std::string("more than 2^64") : std::to_string(nbytes)),
              " bytes, but data_offsets [", info.offset_begin, ", ", info.offset_end, "] hold ",
              info.offset_end - info.offset_begin, " bytes");

    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  // No two (non-empty) tensors may share bytes.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_)
    if (t.offset_end > t.offset_begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->offset_begin < b->offset_begin || (a->offset_begin == b->offset_begin && a->offset_end < b->offset_end);
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* a = by_offset[i - 1];
    const TensorInfo* b = by_offset[i];
    RTP_CHECK(b->offset_begin >= a->offset_end, "'", P, "': tensors '", a->name, "' (data_offsets [",
              a->offset_begin, ", ", a->offset_end, "]) and '", b->name, "' (data_offsets [", b->offset_begin, ", ",
              b->offset_end, "]) overlap");
  }
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& x : tensors_) names.push_back(x.name);
    RTP_THROW("'", path_, "': tensor '", name, "' is missing (the file holds ", tensors_.size(), " tensors",
              closest_names_hint(name, names), ")");
  }
  return *t;
}

const void* SafetensorsFile::data(const TensorInfo& t) const {
  RTP_CHECK(base_ != nullptr, "'", path_, "': data('", t.name, "') on a moved-from SafetensorsFile");
  RTP_CHECK(t.offset_begin <= t.offset_end && t.offset_end <= data_size(), "'", path_, "': tensor '", t.name,
            "' with data_offsets [", t.offset_begin, ", ", t.offset_end, "] does not lie in this file's ",
            data_size(), "-byte data section");
  return base_ + 8 + header_size_ + t.offset_begin;
}

// ---------------------------------------------------------------------------------------------------------------
// SafetensorsDir

std::string closest_names_hint(const std::string& name, const std::vector<std::string>& names, size_t max) {
  if (names.empty() || max == 0) return "";
  std::vector<std::pair<size_t, const std::string*>> scored;
  scored.reserve(names.size());
  for (const auto& n : names) {
    size_t k = 0;
    while (k < n.size() && k < name.size() && n[k] == name[k]) ++k;
    scored.emplace_back(k, &n);
  }
  const size_t m = std::min(max, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(m), scored.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && *a.second < *b.second); });
  std::string s = "; closest present: ";
  for (size_t i = 0; i < m; ++i) s += (i ? ", '" : "'") + *scored[i].second + "'";
  return s;
}

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";
}

SafetensorsDir::SafetensorsDir(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  RTP_CHECK(fs::is_directory(dir, ec), "'", dir, "' is not a directory (expected a checkpoint directory with ",
            "*.safetensors files)");
  const fs::path root(dir);
  const fs::path index_path = root / kIndexName;

  // Shard file names in opening order, and (with an index) what the index says lives where.
  std::vector<std::string> shard_names;
  std::vector<std::pair<std::string, std::string>> index_entries;  // tensor -> shard
  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    const nlohmann::json idx = read_json_file(ip);
    RTP_CHECK(idx.is_object(), "'", ip, "': expected a JSON object with \"weight_map\", found ", idx.type_name());
    auto wm = idx.find("weight_map");
    RTP_CHECK(wm != idx.end() && wm->is_object(), "'", ip, "': expected \"weight_map\": {tensor: shard file}, ",
              wm == idx.end() ? std::string("found none") : str_cat("found ", wm->type_name()));
    std::set<std::string> seen;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      RTP_CHECK(it.value().is_string(), "'", ip, "': weight_map entry for tensor '", it.key(),
                "' must be a shard file name, found ", it.value().type_name());
      const std::string shard = it.value().get<std::string>();
      const fs::path sp(shard);
      bool escapes = shard.empty() || sp.is_absolute();
      for (const auto& part : sp)
        if (part == "..") escapes = true;
      RTP_CHECK(!escapes, "'", ip, "': weight_map entry for tensor '", it.key(), "' names shard '", shard,
                "', expected a file name inside '", dir, "'");
      index_entries.emplace_back(it.key(), shard);
      if (seen.insert(shard).second) shard_names.push_back(shard);
    }
    for (const auto& s : shard_names) {
      if (!fs::is_regular_file(root / s, ec)) {
        std::string example;
        for (const auto& [t, sh] : index_entries)
          if (sh == s) {
            example = t;
            break;
          }
        RTP_THROW("'", dir, "': ", kIndexName, " names shard '", s, "' (e.g. for tensor '", example,
                  "'), but '", (root / s).string(), "' does not exist");
      }
    }
  } else {
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      if (p.extension() == ".safetensors" && fs::is_regular_file(p)) shard_names.push_back(p.filename().string());
    }
    RTP_CHECK(!ec, "cannot list directory '", dir, "': ", ec.message());
    std::sort(shard_names.begin(), shard_names.end());
    RTP_CHECK(!shard_names.empty(), "'", dir, "': no ", kIndexName, " and no *.safetensors files; expected a ",
              "Hugging Face checkpoint directory");
  }

  std::map<std::string, size_t> shard_index;
  for (const auto& s : shard_names) {
    shard_index[s] = files_.size();
    files_.push_back(std::make_unique<SafetensorsFile>((root / s).string()));
    const size_t fi = files_.size() - 1;
    for (const auto& t : files_[fi]->tensors()) {
      auto [it, inserted] = where_.emplace(t.name, std::make_pair(fi, &t));
      RTP_CHECK(inserted, "'", dir, "': tensor '", t.name, "' appears in two shards, '",
                files_[it->second.first]->path(), "' and '", files_[fi]->path(), "'");
    }
  }
  for (const auto& [t, s] : index_entries) {
    auto it = where_.find(t);
    const size_t fi = shard_index.at(s);
    RTP_CHECK(it != where_.end() && it->second.first == fi, "'", dir, "': ", kIndexName, " says tensor '", t,
              "' is in shard '", s, "', but that shard lacks it",
              it == where_.end() ? std::string() : str_cat(" (it is in '", files_[it->second.first]->path(), "')"));
  }
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;  // std::map: already sorted
}

bool SafetensorsDir::contains(const std::string& name) const { return where_.count(name) != 0; }

std::pair<const SafetensorsFile*, const TensorInfo*> SafetensorsDir::find(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return {nullptr, nullptr};
  return {files_[it->second.first].get(), it->second.second};
}

std::pair<const SafetensorsFile*, const TensorInfo*> SafetensorsDir::at(const std::string& name) const {
  auto r = find(name);
  if (!r.first)
    RTP_THROW("'", dir_, "': tensor '", name, "' is missing (the checkpoint holds ", where_.size(), " tensors in ",
              files_.size(), " file(s)", closest_names_hint(name, names()), ")");
  return r;
}

std::vector<const SafetensorsFile*> SafetensorsDir::files() const {
  std::vector<const SafetensorsFile*> out;
  for (const auto& f : files_) out.push_back(f.get());
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

namespace {

class TempFileGuard {
 public:
  explicit TempFileGuard(std::string p) : path_(std::move(p)) {}
  ~TempFileGuard() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  void release() { path_.clear(); }
  int fd_ = -1;

 private:
  std::string path_;
};

void write_all(int fd, const void* data, uint64_t n, const std::string& path, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0 && errno == EINTR) continue;
    RTP_CHECK(w > 0, "writing '", path, "' failed at ", what, ": ", w < 0 ? std::strerror(errno) : "wrote nothing",
              " (disk full?)");
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::unordered_set<std::string> names;
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    RTP_CHECK(!t.name.empty(), "writing '", path, "': a tensor has an empty name");
    RTP_CHECK(t.name != "__metadata__", "writing '", path, "': \"__metadata__\" is reserved, not a tensor name");
    RTP_CHECK(names.insert(t.name).second, "writing '", path, "': tensor '", t.name, "' given twice");
    int64_t numel = 0;
    RTP_CHECK(checked_numel(t.shape, &numel), "writing '", path, "': tensor '", t.name, "' has shape ",
              shape_to_string(t.shape), "; expected non-negative dims with fewer than 2^63 elements");
    uint64_t nbytes = 0;
    RTP_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), dtype_size(t.dtype), &nbytes) &&
                  !__builtin_add_overflow(offset, nbytes, &offset),
              "writing '", path, "': tensor '", t.name, "' is too large");
    RTP_CHECK(nbytes == 0 || t.data != nullptr, "writing '", path, "': tensor '", t.name, "' (", nbytes,
              " bytes) has no data pointer");
    sizes.push_back(nbytes);
    ojson e = ojson::object();
    e["dtype"] = dtype_name(t.dtype);
    e["shape"] = t.shape;
    e["data_offsets"] = {offset - nbytes, offset};
    header[t.name] = std::move(e);
  }
  std::string hs;
  try {
    hs = header.dump();
  } catch (const nlohmann::json::exception& e) {
    RTP_THROW("writing '", path, "': the header cannot be encoded (tensor names and metadata must be UTF-8): ",
              e.what());
  }
  hs.append((8 - hs.size() % 8) % 8, ' ');
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((static_cast<uint64_t>(hs.size()) >> (8 * i)) & 0xff);

  const std::string tmp = temporary_path_for(path);
  TempFileGuard guard(tmp);
  guard.fd_ = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (guard.fd_ < 0) {
    const int err = errno;
    guard.release();  // nothing created
    const std::string why = missing_parent_reason(path);
    RTP_THROW("cannot write '", path, "': ", why.empty() ? std::string(std::strerror(err)) : why);
  }
  write_all(guard.fd_, len, 8, path, "the header length");
  write_all(guard.fd_, hs.data(), hs.size(), path, "the header");
  for (size_t i = 0; i < tensors.size(); ++i)
    if (sizes[i]) write_all(guard.fd_, tensors[i].data, sizes[i], path, str_cat("tensor '", tensors[i].name, "'"));
  RTP_CHECK(::fsync(guard.fd_) == 0, "writing '", path, "': fsync failed: ", std::strerror(errno));
  const int fd = guard.fd_;
  guard.fd_ = -1;
  RTP_CHECK(::close(fd) == 0, "writing '", path, "': close failed: ", std::strerror(errno));
  guard.release();
  commit_temporary(tmp, path);  // removes tmp itself on failure
}

}  // namespace rtp::io
