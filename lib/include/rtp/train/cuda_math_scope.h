#pragma once
// libtorch keeps its matmul precision and SDPA backend choices in one process-wide context; a training stage
// sets them from its recipe for its own duration and puts back what it found, so that a caller running several
// stages (or tests in one process) never inherits another run's choices.
#include <ATen/Context.h>
#include <c10/core/Device.h>

#include <iostream>
#include <string>

namespace rtp::train {

class CudaMathScope {
 public:
  // allow_tf32: TF32 tensor cores for fp32 matmuls; sdpa_backend: "auto" (libtorch's choice) or the one backend
  // SDPA may use ("flash", "efficient", "math", "cudnn"). Nothing changes on a CPU device.
  CudaMathScope(const c10::Device& device, bool allow_tf32, const std::string& sdpa_backend)
      : active_(device.is_cuda()) {
    if (!active_) return;
    auto& g = at::globalContext();
    tf32_ = g.allowTF32CuBLAS();
    flash_ = g.userEnabledFlashSDP();
    efficient_ = g.userEnabledMemEfficientSDP();
    math_ = g.userEnabledMathSDP();
    cudnn_ = g.userEnabledCuDNNSDP();
    g.setAllowTF32CuBLAS(allow_tf32);
    if (sdpa_backend != "auto") {
      g.setSDPUseFlash(sdpa_backend == "flash");
      g.setSDPUseMemEfficient(sdpa_backend == "efficient");
      g.setSDPUseMath(sdpa_backend == "math");
      g.setSDPUseCuDNN(sdpa_backend == "cudnn");
      std::cerr << "SDPA backend restricted to " << sdpa_backend << "\n";
    }
  }
  ~CudaMathScope() {
    if (!active_) return;
    auto& g = at::globalContext();
    g.setAllowTF32CuBLAS(tf32_);
    g.setSDPUseFlash(flash_);
    g.setSDPUseMemEfficient(efficient_);
    g.setSDPUseMath(math_);
    g.setSDPUseCuDNN(cudnn_);
  }
  CudaMathScope(const CudaMathScope&) = delete;
  CudaMathScope& operator=(const CudaMathScope&) = delete;

 private:
  bool active_;
  bool tf32_ = false, flash_ = true, efficient_ = true, math_ = true, cudnn_ = true;
};

}  // namespace rtp::train
