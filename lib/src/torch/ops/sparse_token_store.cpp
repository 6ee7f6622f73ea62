#include "rtp/ops/sparse_token_store.h"

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "device_launch.h"

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
    // The CPU reference writes at slot x capacity + position (or ring_slot) without a range check (the CUDA kernel
    // skips such rows): outside the range that is another head's rows or past the caches' end. Both are host values
    // here, so they are checked; the CUDA kernel reads them on the device.
    bool retrieval = false, streaming = false;
    for (int g = 0; g < p.kv_heads; ++g) {
      retrieval = retrieval || p.retrieval_slot_of[g] >= 0;
      streaming = streaming || p.streaming_slot_of[g] >= 0;
    }
    RTP_CHECK(!retrieval || (*p.position >= 0 && *p.position < p.full_capacity),
              "sparse token store: position must be in [0, full_capacity = ", p.full_capacity, "), found ", *p.position);
    RTP_CHECK(!streaming || (*p.ring_slot >= 0 && *p.ring_slot < p.ring_capacity),
              "sparse token store: ring_slot must be in [0, ring_capacity = ", p.ring_capacity, "), found ", *p.ring_slot);
    k::sparse_token_store_cpu(p);
    return;
  }
#ifdef RTPURBO_WITH_CUDA
  const DeviceLaunch launch(device);
  const cudaError_t e = k::sparse_token_store_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, "sparse token store: CUDA kernel failed: ", cudaGetErrorString(e));
#else
  RTP_THROW("sparse token store: a CUDA device was given but this build has no CUDA kernels");
#endif
}

}  // namespace rtp::ops
