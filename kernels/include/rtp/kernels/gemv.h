#pragma once
// y = x W^T for a few rows of x (the tokens of a decode step): out[n, m] = sum_k x[n, k] W[m, k], float32 sums rounded
// once to the element type. For long reductions (k >= m: o, down, router projections) cuBLAS picks kernels that
// reach 8-81% of the copy bandwidth on an H200 (a Qwen3-0.6B o projection, 4 MB: 12.7 us; this kernel 3.1 us), so the
// model's one-token projections of that kind take this instead (ops::project): four warps per weight row, each a
// quarter of the row in 16-byte streaming loads, every token's dot from one read of the weights; for short, wide
// reductions (the gate/up), a warp per two whole rows instead (gemv_layout.h).
// Three optional epilogues run by the blocks that finish last, each a kernel boundary less in a decode step: the residual
// add + RMSNorm after an o or down projection, q/k RMSNorm + RoPE per head after the q/k/v projection, the MoE
// routing after the router projection; and SwiGLU after a dense MLP's gate/up projection, in every warp.
// CPU reference: float32, double sums (the epilogues' too).
#include <cstdint>

#include "rtp/kernels/gemv_layout.h"
#include "rtp/kernels/sparse_attention_params.h"  // DType

#ifdef RTPURBO_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace rtp::kernels {

constexpr int kGemvMaxRows = 4;  // rows of x (tokens) one launch takes
// The CUDA head norm + RoPE epilogue: a block's rows (2 or 16) must lie in one head, a thread per rotated pair.
constexpr int64_t kGemvEpilogueHeadDimMultiple = 16;
constexpr int64_t kGemvEpilogueMaxHeadDim = 512;

// q/k RMSNorm + RoPE per head, for the fused q/k/v projection of a decoder layer: out's rows per token are [q heads |
// k heads | v heads] x head_dim. Once the blocks of a q or k head have written it, the last of them (counted in
// done[head]) writes the head's normed and roped rows as rms_norm_rope (norm_rope.h) computes them; v passes through.
// Where a separate kernel cost a launch and a drain of the chain per layer, this costs a counter per block.
struct GemvHeadNormRope {
  const void* q_weight = nullptr;  // [head_dim], the element type
  const void* k_weight = nullptr;  // [head_dim]
  const float* cos = nullptr;      // [seq_len, head_dim] float32; x row n is position n % seq_len
  const float* sin = nullptr;
  void* q_normed = nullptr;  // [rows, q_heads, head_dim] contiguous, each
  void* q_roped = nullptr;
  void* k_normed = nullptr;  // [rows, k_heads, head_dim] contiguous, each
  void* k_roped = nullptr;
  uint32_t* done = nullptr;  // [q_heads + k_heads] (+ k_heads with the token store), 0 at the launch and after it
  int64_t q_heads = 0, k_heads = 0, head_dim = 0, seq_len = 1;
  float eps = 0.f;
  // Optional, all three or none: a decode step's token store (kv_token_store.h) in this launch. Each row is one
  // sequence's token (seq_len 1); its roped k rows and its v rows (out's columns after the k heads) are also written to
  // k_cache / v_cache [rows, k_heads, capacity, head_dim] (contiguous) at the slot *position (device memory; host for
  // the CPU reference; outside [0, capacity) nothing is written), by each k and v head's last block. The v heads count
  // in done then too.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  const int64_t* position = nullptr;
  int64_t capacity = 0;
  bool active() const { return done != nullptr; }
  bool stores_token() const { return k_cache || v_cache || position; }
};

// The MoE router's softmax and top-k (moe_router.h) of the logits this launch writes to out ([rows, experts], the
// element type), by the last block: the router projection and the routing in one launch.
struct GemvMoeRoute {
  int64_t* expert = nullptr;  // [rows, top_k]
  void* weight = nullptr;     // [rows, top_k] in the element type
  uint32_t* done = nullptr;   // one count, 0 at the launch and again after it
  int64_t top_k = 0;
  bool norm_topk_prob = true;
  bool active() const { return done != nullptr; }
};

// What every launch takes (the kernels' parameters, kept small: the graph of a decode step launches the GEMV four to
// six times per layer) and the add + RMSNorm epilogue, which is in the default step.
struct GemvCore {
  const void* x = nullptr;       // [rows, k], rows x_row_stride elements apart
  const void* weight = nullptr;  // [m, k] contiguous
  void* out = nullptr;           // [rows, m] contiguous
  int64_t rows = 0, m = 0, k = 0, x_row_stride = 0;
  DType dtype = DType::F32;
  GemvLayout layout = GemvLayout::Auto;  // a speed choice: the sums are the same up to float32 rounding order
  // out is float32, each sum rounded to the element type first: the LM head's logits as at::linear(...).float() gives
  // them, without the cast kernel (and cuBLAS: 199 against 210 us per token on Qwen3-30B-A3B, H100). No epilogue.
  bool out_float32 = false;
  // SwiGLU in the launch (no count: each warp holds a gate row and its up row): weight's rows are [gate (m / 2) | up
  // (m / 2)] and out is [rows, m / 2] = round(silu(g) rounded) * u, g and u each sum rounded to the element type, as
  // swiglu (swiglu.h) of the projection's two halves gives it; the dense MLP's gate/up projection and its activation
  // in one launch. The WholeRows layout (Auto or WholeRows); m even; no other epilogue.
  bool swiglu = false;
  // Optional epilogue, all five set or none: the residual add and RMSNorm that follow the o projection in a decoder
  // layer, in the same launch. Once every block has written its outputs, the last one to finish (counted in *done,
  // which must be 0 at the launch and is 0 again after it) computes per row sum = round(out + residual) and normed =
  // norm_weight * round(sum * rsqrt(mean(sum^2) + eps)), as rms_norm with a residual (norm_rope.h). A kernel
  // boundary less per layer; launches that share a `done` must not overlap (one stream).
  const void* residual = nullptr;     // [rows, m] contiguous
  const void* norm_weight = nullptr;  // [m]
  void* sum_out = nullptr;            // [rows, m] contiguous
  void* normed_out = nullptr;         // [rows, m] contiguous
  uint32_t* done = nullptr;
  float eps = 0.f;
  bool has_add_norm() const { return residual || norm_weight || sum_out || normed_out || done; }
};

struct GemvParams : GemvCore {
  // The other epilogues; at most one of the three per launch. Each goes to the kernel as a parameter of its own, only
  // to the kernels that run it.
  GemvHeadNormRope head_norm_rope;
  GemvMoeRoute moe_route;
};

const char* check_gemv_params(const GemvParams& p, bool cuda);
GemvLayout resolved_layout(const GemvParams& p);  // Auto made concrete
void gemv_cpu(const GemvParams& p);  // F32 only

#ifdef RTPURBO_WITH_CUDA
cudaError_t gemv_cuda(const GemvParams& p, cudaStream_t stream);
#endif

}  // namespace rtp::kernels
