#pragma once
namespace rtp::kernels {
// True when this build carries the CUDA kernels; the lib's dispatch asks this before choosing a CUDA path.
bool built_with_cuda();
}  // namespace rtp::kernels
