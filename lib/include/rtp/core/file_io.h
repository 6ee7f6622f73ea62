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

// Why a file cannot be created at `path` for lack of its directory: "directory 'd' does not exist" or "'d' is
// not a directory", else "". Errors about an output then name the destination and the real cause, not the
// temporary file the write went through.
std::string missing_parent_reason(const std::string& path);
// An output file about to be written (e.g. checked before a long computation): throws "<what> 'path': directory
// 'd' does not exist" (or that d is not a directory, that path is one, or that no file can be created in d: tried).
void require_output_directory_for(const std::string& path, const std::string& what);
// An output directory the work will create at its end: it, or the nearest of its ancestors that exists, is a
// directory in which files can be created (tried). Nothing is left behind: a run refused later leaves no empty
// directory.
void require_creatable_directory(const std::string& path, const std::string& what);
// An input file: exists, is not a directory (an ifstream opens one and reads nothing), is readable. Throws "<what>
// 'path' does not exist (expected <expected>)" or "<what> 'path' is a directory, expected <expected>".
void require_input_file(const std::string& path, const std::string& what, const std::string& expected = "");
// An input directory: throws "<what> 'path' does not exist" or "<what> 'path' is a file, expected a directory",
// followed by `hint` when given.
void require_directory(const std::string& path, const std::string& what, const std::string& hint = "");

// Removes the entries of `dir` named `<prefix>[...].tmp.<pid>` or `<prefix>[...].tmp.<pid>.<suffix>` whose process no
// longer runs on this host: what a write interrupted by a signal (Ctrl-C, a job's time limit) left behind, which no
// later run would otherwise remove (each names its temporaries with its own pid). Returns how many were removed.
// Processes are judged on this host only: do not point two hosts' jobs at one output directory.
int remove_stale_temporaries(const std::string& dir, const std::string& prefix);

bool file_exists(const std::string& path);
bool directory_exists(const std::string& path);
void make_directories(const std::string& path);
// Removes a file or a directory tree (symlinks are removed, not followed); nothing if absent. POSIX nftw:
// std::filesystem::remove_all crashes in programs linked with the PyPI libtorch (it exports its own copy).
void remove_tree(const std::string& path);

}  // namespace rtp
