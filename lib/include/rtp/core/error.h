#pragma once
// Errors are exceptions that say what was expected, what was found and, where known, why.
// Only main() catches them (tools/common/main_guard.h) and turns them into a message and a non-zero exit.
#include <sstream>
#include <stdexcept>
#include <string>

namespace rtp {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}
}  // namespace detail

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append_all(os, args...);
  return os.str();
}

template <typename... Args>
[[noreturn]] void throw_error(const char* file, int line, const Args&... args) {
  std::string msg = str_cat(args...);
#ifndef NDEBUG
  msg += str_cat(" [", file, ":", line, "]");
#else
  (void)file;
  (void)line;
#endif
  throw Error(msg);
}

}  // namespace rtp

#define RTP_THROW(...) ::rtp::throw_error(__FILE__, __LINE__, __VA_ARGS__)
#define RTP_CHECK(cond, ...)                  \
  do {                                        \
    if (!(cond)) RTP_THROW(__VA_ARGS__);      \
  } while (0)
