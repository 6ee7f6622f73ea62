#pragma once
// Whole-file reads and atomic writes. Nothing the toolkit writes is ever left half-written: data goes to a
// temporary file in the same directory, which is then renamed over the destination.
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace rtp {

std::string read_text_file(const std::string& path);
nlohmann::json read_json_file(const std::string& path);

void write_file_atomic(const std::string& path, const std::string& contents);
void write_json_atomic(const std::string& path, const nlohmann::json& value, int indent = 2);

// A temporary path next to `path` (same filesystem, so that rename() is atomic).
std::string temporary_path_for(const std::string& path);
// rename(tmp, path), throwing with both names on failure.
void commit_temporary(const std::string& tmp, const std::string& path);

bool file_exists(const std::string& path);
bool directory_exists(const std::string& path);
void make_directories(const std::string& path);
// Removes a file or a directory tree (symlinks are removed, not followed); nothing if absent. POSIX nftw:
// std::filesystem::remove_all crashes in programs linked with the PyPI libtorch (it exports its own copy).
void remove_tree(const std::string& path);

}  // namespace rtp
