#include "rtp/kernels/build_info.h"
namespace rtp::kernels {
bool built_with_cuda() {
#ifdef RTPURBO_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace rtp::kernels
