#include "rtp/ops/sparse_token_store.h"

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool sparse_token_store_supported(torch::Device device, torch::ScalarType dtype) {
  return device.is_cuda() && k::built_with_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kFloat32);
}

void sparse_token_store(const k::SparseTokenStoreParams& p, torch::Device device) {
  const char* err = k::check_sparse_token_store_params(p, device.is_cuda());
  RTP_CHECK(!*err, err);
  if (!device.is_cuda()) {
    k::sparse_token_store_cpu(p);
    return;
  }
#ifdef RTPURBO_WITH_CUDA
  const cudaError_t e = k::sparse_token_store_cuda(p, c10::cuda::getCurrentCUDAStream(device.index()));
  RTP_CHECK(e == cudaSuccess, "sparse token store: CUDA kernel failed: ", cudaGetErrorString(e));
#else
  RTP_THROW("sparse token store: a CUDA device was given but this build has no CUDA kernels");
#endif
}

}  // namespace rtp::ops
