#pragma once
// The MoE block of Qwen3-MoE for a few tokens (decode): each token's top-k experts, read straight from the expert
// weight tensors by the ids the router wrote on the device. No expert count goes to the host, so a CUDA graph can
// capture it, and only the selected experts' weights are read (the bandwidth floor of a decode step).
//
// For token n and slot s < K with expert e = expert[n K + s] and routing weight w = weight[n K + s]:
//   g_r = gate_up[e][r] . x[n],  u_r = gate_up[e][I + r] . x[n]        (r < I)
//   a_r = silu(g_r) * u_r
//   y_h = down[e][h] . a                                               (h < H)
//   out[n][h] = sum_s w * y_h
// bf16 kernels round where the eager libtorch path does (g, u, silu(g), a, y and w * y to bf16; dot products in
// fp32) and sum the K slots in fp32, rounding once. CPU reference: float32 inputs, double arithmetic, no rounding.
#include <cstddef>
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

// How the two passes are cut into warps and blocks. Every choice computes the same sums in the same order, so the
// result is the same bit for bit; only the speed differs (`rtpurbo-bench-decode --breakdown` times them).
// The defaults (2,8,1, one launch) are the fastest whole decode step of Qwen3-30B-A3B on an H100 (2026-12-07: 3.71-3.73
// against 3.76-3.80 ms a token for two launches, 2,8,1, at 4K keys; 3.92 for 1,8,0;
// bench/results/moe-launch-shapes-h100-20261207/, bench/results/moe-one-launch-h100-20261207/). Brace-initialise all
// four fields: a shorter list leaves one_launch on.
struct MoeDecodeLaunchShape {
  int gate_up_rows_per_warp = 2;  // 1, 2 or 4 intermediate rows (each a gate and an up row) per warp
  int down_warps_per_block = 8;   // 4 or 8 hidden rows per block of the down pass
  // The two-launch down pass requests every weight vector of its rows before it waits for the gate/up pass (the vector
  // path with K <= 8 and I <= 1024 bf16 / 512 float32 elements; else only the first vectors, as without it). The one
  // launch always requests one vector a lane ahead.
  bool down_loads_ahead = true;
  // Both passes in one persistent cooperative launch: its blocks (as many as fit on the GPU at once) take gate/up work
  // items, then down items, so the down rows' weights are requested while the last gate/up items finish, with no
  // launch boundary between the passes; a down item waits for every gate/up item. Needs 8 down warps per block, 1 or
  // 2 gate/up rows per warp and three counts in `done`; where the vector paths do not apply (see launch) the two
  // launches run instead, with the same result. On an H100 the step is 1.0-1.6% faster than with two launches
  // (Qwen3-30B-A3B at 4K and 32K, dense and sparse; docs/decode.md "Both MoE passes in one launch").
  bool one_launch = true;
};

// Empty when every field is in its range, else which field is not and what it may be.
const char* check_moe_decode_launch_shape(const MoeDecodeLaunchShape& shape);

struct MoeDecodeParams {
  const void* x = nullptr;        // [N, H]
  const int64_t* expert = nullptr;  // [N, K], each in [0, E)
  const void* weight = nullptr;   // [N, K] routing weights, in `dtype`
  const void* gate_up = nullptr;  // [E, 2I, H]: rows [0, I) gate, [I, 2I) up
  const void* down = nullptr;     // [E, H, I]
  void* out = nullptr;            // [N, H]
  void* act = nullptr;            // workspace [N, K, I] in `dtype` (CUDA only)
  int64_t tokens = 0, top_k = 0, experts = 0, hidden = 0, intermediate = 0;
  DType dtype = DType::F32;
  MoeDecodeLaunchShape shape;
  // Optional epilogue, all five set or none: the residual add and RMSNorm that follow the MoE block in a decoder layer
  // (the next layer's input norm, or the final norm), by the down pass's last block as the GEMV's (gemv.h): per token
  // sum = round(out + residual), normed = norm_weight * round(sum * rsqrt(mean(sum^2) + eps)). A kernel boundary less
  // per MoE layer; launches that share a `done` must not overlap (one stream).
  const void* residual = nullptr;     // [N, H]
  const void* norm_weight = nullptr;  // [H]
  void* sum_out = nullptr;            // [N, H]
  void* normed_out = nullptr;         // [N, H]
  // Counts, 0 at the launch and again after it: one for the epilogue, three with shape.one_launch (the first of them
  // the epilogue's). Set without the epilogue only for one_launch.
  uint32_t* done = nullptr;
  float eps = 0.f;
  // Tests: the one launch in the form taken where the cooperative launch is refused (every work item from a count).
  bool one_launch_by_count = false;
  bool has_add_norm() const { return residual || norm_weight || sum_out || normed_out; }
};

// Empty when usable, else what is wrong (a launch shape out of its range included).
const char* check_moe_decode_params(const MoeDecodeParams& p, bool cuda);
void moe_decode_cpu(const MoeDecodeParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t moe_decode_cuda(const MoeDecodeParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
