#include "rtp/core/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <vector>

#include "rtp/core/error.h"

namespace rtp {

namespace fs = std::filesystem;

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  RTP_CHECK(in.good(), "cannot open '", path, "' for reading: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    RTP_THROW("'", path, "' is not valid JSON: ", e.what());
  }
}

std::string temporary_path_for(const std::string& path) {
  std::random_device rd;
  std::ostringstream ss;
  ss << path << ".tmp." << ::getpid() << "." << std::hex << rd();
  return ss.str();
}

int remove_stale_temporaries(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  std::vector<std::string> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const size_t mark = name.find(".tmp.", prefix.size());
    if (mark == std::string::npos) continue;
    size_t end_digits = mark + 5;
    while (end_digits < name.size() && std::isdigit(static_cast<unsigned char>(name[end_digits]))) ++end_digits;
    if (end_digits == mark + 5 || end_digits - mark - 5 > 9) continue;
    if (end_digits != name.size() && name[end_digits] != '.') continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name.substr(mark + 5, end_digits - mark - 5)));
    if (pid == ::getpid() || pid <= 0) continue;
    if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge (EPERM: alive)
    stale.push_back(it->path().string());
  }
  for (const auto& p : stale) remove_tree(p);
  return static_cast<int>(stale.size());
}

void commit_temporary(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp);
    RTP_THROW("cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::string tmp = temporary_path_for(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out.good()) {
      const int err = errno;
      const std::string why = missing_parent_reason(path);
      RTP_THROW("cannot write '", path, "': ", why.empty() ? std::string(std::strerror(err)) : why);
    }
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out.good()) {
      out.close();
      fs::remove(tmp);
      RTP_THROW("writing '", path, "' failed after ", contents.size(), " bytes (disk full?)");
    }
  }
  commit_temporary(tmp, path);
}

void write_json_atomic(const std::string& path, const nlohmann::json& value, int indent) {
  write_file_atomic(path, value.dump(indent) + "\n");
}

namespace {
std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}
}  // namespace

std::string missing_parent_reason(const std::string& path) {
  const std::string dir = parent_of(path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return "directory '" + dir + "' does not exist";
  if (!S_ISDIR(st.st_mode)) return "'" + dir + "' is not a directory";
  return "";
}

namespace {
// Creates and removes a file next to `path`: access(W_OK) says yes to root on read-only filesystems and /proc.
std::string cannot_create_reason(const std::string& path) {
  const std::string probe = temporary_path_for(path);
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return "";
}
}  // namespace

void require_output_directory_for(const std::string& path, const std::string& what) {
  RTP_CHECK(!path.empty(), what, " is empty: expected a file path");
  const std::string why = missing_parent_reason(path);
  RTP_CHECK(why.empty(), what, " '", path, "': ", why);
  RTP_CHECK(!fs::is_directory(path), what, " '", path, "' is a directory, expected a file name");
  const std::string denied = cannot_create_reason(path);
  RTP_CHECK(denied.empty(), what, " '", path, "': cannot create files in directory '", parent_of(path), "': ", denied);
}

void require_creatable_directory(const std::string& path, const std::string& what) {
  RTP_CHECK(!path.empty(), what, " is empty: expected a directory path");
  std::string existing = path;
  struct stat st {};
  while (::stat(existing.c_str(), &st) != 0) {
    const std::string up = parent_of(existing);
    if (up == existing) break;
    existing = up;
  }
  RTP_CHECK(S_ISDIR(st.st_mode), what, " '", path, "': '", existing, "' is a file, expected a directory");
  const std::string denied = cannot_create_reason((fs::path(existing) / "probe").string());
  RTP_CHECK(denied.empty(), what, " '", path, "': cannot create files in '", existing, "': ", denied);
}

void require_input_file(const std::string& path, const std::string& what, const std::string& expected) {
  struct stat st {};
  RTP_CHECK(::stat(path.c_str(), &st) == 0, what, " '", path, "' does not exist",
            expected.empty() ? "" : " (expected " + expected + ")");
  RTP_CHECK(!S_ISDIR(st.st_mode), what, " '", path, "' is a directory, expected ", expected.empty() ? "a file" : expected);
  RTP_CHECK(::access(path.c_str(), R_OK) == 0, what, " '", path, "' is not readable");
}

void require_directory(const std::string& path, const std::string& what, const std::string& hint) {
  struct stat st {};
  const bool exists = ::stat(path.c_str(), &st) == 0;
  RTP_CHECK(exists, what, " '", path, "' does not exist", hint.empty() ? "" : " ", hint);
  RTP_CHECK(S_ISDIR(st.st_mode), what, " '", path, "' is a file, expected a directory", hint.empty() ? "" : " ", hint);
}

bool file_exists(const std::string& path) { return fs::is_regular_file(path); }
bool directory_exists(const std::string& path) { return fs::is_directory(path); }

void make_directories(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  RTP_CHECK(!ec, "cannot create directory '", path, "': ", ec.message());
}

namespace {
int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 ? 0 : -1;
}
}  // namespace

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  const int rc = S_ISDIR(st.st_mode) ? ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) : ::remove(path.c_str());
  RTP_CHECK(rc == 0, "cannot remove '", path, "': ", std::strerror(errno));
}

}  // namespace rtp
