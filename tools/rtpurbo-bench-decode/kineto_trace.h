#pragma once
// A Kineto trace (the PyTorch profiler: host ops, CUDA runtime calls, kernels) of one stretch of work, saved as Chrome
// trace JSON: where a prefill's time goes when the bench's seconds alone do not say (rtpurbo-bench-decode --trace-prefill;
// scripts/device/trace_summary.py sums one).
#include <memory>
#include <string>

namespace rtp::tools {

class KinetoTrace {
 public:
  // Starts recording now (CPU and, where built for it, CUDA activity).
  explicit KinetoTrace(bool cuda);
  ~KinetoTrace();  // stops without saving if save was not called
  KinetoTrace(const KinetoTrace&) = delete;
  KinetoTrace& operator=(const KinetoTrace&) = delete;
  // Stops recording and writes the trace to `path` (a temporary file, then renamed).
  void save(const std::string& path);

 private:
  bool active_ = false;
};

}  // namespace rtp::tools
