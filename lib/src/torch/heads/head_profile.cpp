#include "rtp/heads/head_profile.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstring>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"

namespace rtp::heads {

namespace {

// Closes an HDF5 handle on scope exit.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// ---- writing ----

void write_dataset(hid_t file, const std::string& name, hid_t mem_type, hid_t file_type, const void* data,
                   int64_t rows, int64_t cols, const std::string& path) {
  hsize_t dims[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(cols)};
  H5Id space(H5Screate_simple(2, dims, nullptr), H5Sclose);
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  H5Id ds(H5Dcreate2(file, name.c_str(), file_type, space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  RTP_CHECK(ds.ok(), "'", path, "': cannot create dataset ", name);
  RTP_CHECK(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "'", path,
            "': cannot write dataset ", name);
}

void write_attr_raw(hid_t obj, const std::string& name, hid_t mem_type, hid_t file_type, const void* data,
                    const std::string& path) {
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id a(H5Acreate2(obj, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  RTP_CHECK(a.ok() && H5Awrite(a.get(), mem_type, data) >= 0, "'", path, "': cannot write attribute ", name);
}
void write_attr(hid_t obj, const std::string& name, int64_t v, const std::string& path) {
  write_attr_raw(obj, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &v, path);
}
void write_attr(hid_t obj, const std::string& name, double v, const std::string& path) {
  write_attr_raw(obj, name, H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &v, path);
}
void write_attr(hid_t obj, const std::string& name, const std::string& v, const std::string& path) {
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, v.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  write_attr_raw(obj, name, type.get(), type.get(), buf.data(), path);
}

// ---- reading ----

template <class T>
std::vector<T> read_matrix(hid_t file, const std::string& name, int64_t rows, int64_t cols, const char* what,
                           const std::string& path, bool required, hid_t mem_type) {
  htri_t exists = H5Lexists(file, name.substr(0, name.find('/', 1)).c_str(), H5P_DEFAULT) > 0 &&
                  H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0;
  if (!exists) {
    RTP_CHECK(!required, "'", path, "': missing dataset ", name, " (expected ", what, " [", rows, ", ", cols,
              "]); is this a head profile from rtpurbo-identify-heads?");
    return {};
  }
  H5Id ds(H5Dopen2(file, name.c_str(), H5P_DEFAULT), H5Dclose);
  RTP_CHECK(ds.ok(), "'", path, "': cannot open dataset ", name);
  H5Id space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  hsize_t dims[8] = {0};
  if (rank > 0 && rank <= 8) H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  std::string found = "[";
  for (int i = 0; i < rank && i < 8; ++i) found += (i ? ", " : "") + std::to_string(dims[i]);
  found += "]";
  RTP_CHECK(rank == 2 && dims[0] == static_cast<hsize_t>(rows) && dims[1] == static_cast<hsize_t>(cols), "'", path,
            "': dataset ", name, " has the wrong shape: expected ", what, " [", rows, ", ", cols, "], found ", found);
  std::vector<T> out(static_cast<size_t>(rows * cols));
  RTP_CHECK(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0, "'", path,
            "': cannot read dataset ", name, " as ", what);
  return out;
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

void require_attr(hid_t obj, const std::string& name, const std::string& path) {
  RTP_CHECK(has_attr(obj, name), "'", path, "': missing attribute '", name, "' on the root group");
}

int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& path) {
  require_attr(obj, name, path);
  H5Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  int64_t v = 0;
  RTP_CHECK(a.ok() && H5Aread(a.get(), H5T_NATIVE_INT64, &v) >= 0, "'", path, "': attribute '", name,
            "' is not an integer");
  return v;
}
double read_double_attr(hid_t obj, const std::string& name, const std::string& path) {
  require_attr(obj, name, path);
  H5Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  double v = 0;
  RTP_CHECK(a.ok() && H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) >= 0, "'", path, "': attribute '", name,
            "' is not a number");
  return v;
}
std::string read_string_attr(hid_t obj, const std::string& name, const std::string& path) {
  require_attr(obj, name, path);
  H5Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  H5Id ftype(H5Aget_type(a.get()), H5Tclose);
  RTP_CHECK(H5Tget_class(ftype.get()) == H5T_STRING && !H5Tis_variable_str(ftype.get()), "'", path,
            "': attribute '", name, "' is not a fixed-length string");
  const size_t n = H5Tget_size(ftype.get());
  H5Id mtype(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mtype.get(), n);
  H5Tset_strpad(mtype.get(), H5T_STR_NULLPAD);
  std::string buf(n, '\0');
  RTP_CHECK(H5Aread(a.get(), mtype.get(), buf.data()) >= 0, "'", path, "': cannot read attribute '", name, "'");
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

}  // namespace

void HeadProfile::validate(const std::string& origin) const {
  RTP_CHECK(num_layers > 0 && num_q_heads > 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "'", origin,
            "': head profile needs positive sizes with query heads a multiple of KV heads; found ", num_layers,
            " layers, ", num_q_heads, " query heads, ", num_kv_heads, " KV heads");
  const size_t nq = static_cast<size_t>(num_layers * num_q_heads), nk = static_cast<size_t>(num_layers * num_kv_heads);
  auto need = [&](size_t have, size_t want, const char* name, bool optional) {
    RTP_CHECK(have == want || (optional && have == 0), "'", origin, "': ", name, " has ", have, " values, expected ",
              want);
  };
  need(retrieval.size(), nq, "retrieval", false);
  need(long_range.size(), nq, "long_range", false);
  need(copy.size(), nq, "copy", true);
  need(induction.size(), nq, "induction", true);
  need(kv_retrieval.size(), nk, "kv_retrieval", false);
  need(kv_long_range.size(), nk, "kv_long_range", true);
  need(selected_kv.size(), nk, "selected_kv", false);
  need(selected_q.size(), nq, "selected_q", false);
  const int64_t G = group_size();
  for (int64_t l = 0; l < num_layers; ++l)
    for (int64_t h = 0; h < num_q_heads; ++h) {
      const uint8_t q = selected_q[l * num_q_heads + h], kv = selected_kv[l * num_kv_heads + h / G];
      RTP_CHECK(q <= 1 && kv <= 1, "'", origin, "': selections must be 0 or 1 (layer ", l, ", query head ", h, ")");
      RTP_CHECK(!q || kv, "'", origin, "': query head ", h, " of layer ", l, " is selected but its KV head ", h / G,
                " is not");
    }
}

void save_head_profile(const HeadProfile& p, const std::string& path) {
  p.validate(path);
  const std::string tmp = temporary_path_for(path);
  try {
    {
      // HDF5 prints its error stack to stderr unless told not to; the exception below says what failed.
      hid_t fid = -1;
      H5E_BEGIN_TRY { fid = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); }
      H5E_END_TRY;
      H5Id file(fid, H5Fclose);
      RTP_CHECK(file.ok(), "cannot create HDF5 file '", tmp, "' (for '", path, "')");
      const hid_t f = file.get();
      const int64_t L = p.num_layers, Hq = p.num_q_heads, Hkv = p.num_kv_heads;
      auto f32 = [&](const std::string& name, const std::vector<float>& v, int64_t cols) {
        if (!v.empty()) write_dataset(f, name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, v.data(), L, cols, path);
      };
      f32("/scores/retrieval", p.retrieval, Hq);
      f32("/scores/long_range", p.long_range, Hq);
      f32("/scores/copy", p.copy, Hq);
      f32("/scores/induction", p.induction, Hq);
      f32("/kv_scores/retrieval", p.kv_retrieval, Hkv);
      f32("/kv_scores/long_range", p.kv_long_range, Hkv);
      write_dataset(f, "/selected_kv", H5T_NATIVE_UINT8, H5T_STD_U8LE, p.selected_kv.data(), L, Hkv, path);
      write_dataset(f, "/selected_q", H5T_NATIVE_UINT8, H5T_STD_U8LE, p.selected_q.data(), L, Hq, path);
      H5Id root(H5Gopen2(f, "/", H5P_DEFAULT), H5Gclose);
      const hid_t r = root.get();
      const CalibrationSettings& s = p.settings;
      write_attr(r, "format_version", s.format_version, path);
      write_attr(r, "tool_version", s.tool_version, path);
      write_attr(r, "num_layers", L, path);
      write_attr(r, "num_query_heads", Hq, path);
      write_attr(r, "num_kv_heads", Hkv, path);
      write_attr(r, "model_dir", s.model_dir, path);
      write_attr(r, "calibration", s.calibration, path);
      write_attr(r, "text_source", s.text_source, path);
      write_attr(r, "num_sequences", s.num_sequences, path);
      write_attr(r, "seq_len", s.seq_len, path);
      write_attr(r, "span_len", s.span_len, path);
      write_attr(r, "window", s.window, path);
      write_attr(r, "sink", s.sink, path);
      write_attr(r, "seed", static_cast<int64_t>(s.seed), path);
      write_attr(r, "selection_rule", s.selection_rule, path);
      write_attr(r, "selection_value", s.selection_value, path);
      write_attr(r, "budget_context", s.budget_context, path);
      write_attr(r, "aggregation", s.aggregation, path);
      write_attr(r, "per_query_head", static_cast<int64_t>(s.per_query_head ? 1 : 0), path);
      write_attr(r, "dtype", s.dtype, path);
      RTP_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "cannot flush '", tmp, "'");
    }
    commit_temporary(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
}

HeadProfile load_head_profile(const std::string& path) {
  RTP_CHECK(file_exists(path), "head profile '", path, "' does not exist (make one with rtpurbo-identify-heads)");
  htri_t is_h5 = -1;
  H5E_BEGIN_TRY { is_h5 = H5Fis_hdf5(path.c_str()); }
  H5E_END_TRY;
  RTP_CHECK(is_h5 > 0, "head profile '", path, "' is not an HDF5 file");
  hid_t fid = -1;
  H5E_BEGIN_TRY { fid = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT); }
  H5E_END_TRY;
  H5Id file(fid, H5Fclose);
  RTP_CHECK(file.ok(), "cannot open head profile '", path, "' as HDF5");
  H5Id root(H5Gopen2(file.get(), "/", H5P_DEFAULT), H5Gclose);
  const hid_t r = root.get();
  HeadProfile p;
  CalibrationSettings& s = p.settings;
  s.format_version = read_int_attr(r, "format_version", path);
  RTP_CHECK(s.format_version == kHeadProfileFormatVersion, "'", path, "': head profile format version ",
            s.format_version, " is not supported (this build reads version ", kHeadProfileFormatVersion, ")");
  p.num_layers = read_int_attr(r, "num_layers", path);
  p.num_q_heads = read_int_attr(r, "num_query_heads", path);
  p.num_kv_heads = read_int_attr(r, "num_kv_heads", path);
  RTP_CHECK(p.num_layers > 0 && p.num_q_heads > 0 && p.num_kv_heads > 0, "'", path,
            "': sizes must be positive, found ", p.num_layers, " layers, ", p.num_q_heads, " query heads, ",
            p.num_kv_heads, " KV heads");
  s.tool_version = read_string_attr(r, "tool_version", path);
  s.model_dir = read_string_attr(r, "model_dir", path);
  s.calibration = read_string_attr(r, "calibration", path);
  s.text_source = read_string_attr(r, "text_source", path);
  s.num_sequences = read_int_attr(r, "num_sequences", path);
  s.seq_len = read_int_attr(r, "seq_len", path);
  s.span_len = read_int_attr(r, "span_len", path);
  s.window = read_int_attr(r, "window", path);
  s.sink = read_int_attr(r, "sink", path);
  s.seed = static_cast<uint64_t>(read_int_attr(r, "seed", path));
  s.selection_rule = read_string_attr(r, "selection_rule", path);
  s.selection_value = read_double_attr(r, "selection_value", path);
  s.budget_context = read_int_attr(r, "budget_context", path);
  s.aggregation = read_string_attr(r, "aggregation", path);
  s.per_query_head = read_int_attr(r, "per_query_head", path) != 0;
  s.dtype = read_string_attr(r, "dtype", path);

  const hid_t f = file.get();
  const int64_t L = p.num_layers, Hq = p.num_q_heads, Hkv = p.num_kv_heads;
  const char* fq = "float32 [layers, query heads]";
  const char* fk = "float32 [layers, kv heads]";
  p.retrieval = read_matrix<float>(f, "/scores/retrieval", L, Hq, fq, path, true, H5T_NATIVE_FLOAT);
  p.long_range = read_matrix<float>(f, "/scores/long_range", L, Hq, fq, path, true, H5T_NATIVE_FLOAT);
  p.copy = read_matrix<float>(f, "/scores/copy", L, Hq, fq, path, false, H5T_NATIVE_FLOAT);
  p.induction = read_matrix<float>(f, "/scores/induction", L, Hq, fq, path, false, H5T_NATIVE_FLOAT);
  p.kv_retrieval = read_matrix<float>(f, "/kv_scores/retrieval", L, Hkv, fk, path, true, H5T_NATIVE_FLOAT);
  p.kv_long_range = read_matrix<float>(f, "/kv_scores/long_range", L, Hkv, fk, path, false, H5T_NATIVE_FLOAT);
  p.selected_kv =
      read_matrix<uint8_t>(f, "/selected_kv", L, Hkv, "uint8 [layers, kv heads]", path, true, H5T_NATIVE_UINT8);
  p.selected_q =
      read_matrix<uint8_t>(f, "/selected_q", L, Hq, "uint8 [layers, query heads]", path, false, H5T_NATIVE_UINT8);
  if (p.selected_q.empty()) {
    RTP_CHECK(Hq % Hkv == 0, "'", path, "': ", Hq, " query heads do not split into ", Hkv, " KV heads");
    p.selected_q.resize(static_cast<size_t>(L * Hq));
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < Hq; ++h) p.selected_q[l * Hq + h] = p.selected_kv[l * Hkv + h / (Hq / Hkv)];
  }
  p.validate(path);
  return p;
}

sparse::HeadMap head_map_from_profile(const HeadProfile& p) {
  p.validate("head profile");
  auto m = sparse::HeadMap::all_streaming(p.num_layers, p.num_kv_heads, p.group_size());
  for (int64_t l = 0; l < p.num_layers; ++l)
    for (int64_t g = 0; g < p.num_kv_heads; ++g) m.retrieval[l][g] = p.selected_kv[l * p.num_kv_heads + g] ? 1 : 0;
  m.validate("head profile");
  return m;
}

}  // namespace rtp::heads
