#include "kineto_trace.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdio>
#include <set>

#include "rtp/core/error.h"

namespace rtp::tools {

namespace prof = torch::profiler::impl;

namespace {
std::set<prof::ActivityType> activities(bool cuda) {
  std::set<prof::ActivityType> a{prof::ActivityType::CPU};
  if (cuda) a.insert(prof::ActivityType::CUDA);
  return a;
}
prof::ProfilerConfig config() { return prof::ProfilerConfig(prof::ProfilerState::KINETO); }
}  // namespace

KinetoTrace::KinetoTrace(bool cuda) {
  torch::autograd::profiler::prepareProfiler(config(), activities(cuda));
  torch::autograd::profiler::enableProfiler(config(), activities(cuda));
  active_ = true;
}

KinetoTrace::~KinetoTrace() {
  if (active_) torch::autograd::profiler::disableProfiler();
}

void KinetoTrace::save(const std::string& path) {
  RTP_CHECK(active_, "KinetoTrace::save: the trace was already saved");
  active_ = false;
  auto result = torch::autograd::profiler::disableProfiler();
  RTP_CHECK(result != nullptr, "KinetoTrace::save: the profiler returned no result");
  const std::string tmp = path + ".tmp";
  result->save(tmp);
  RTP_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "KinetoTrace::save: could not rename '", tmp, "' to '", path, "'");
}

}  // namespace rtp::tools
