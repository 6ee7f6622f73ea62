// gemv.h, SplitRows: a block of 8 warps takes 2 weight rows, 4 warps per row, each warp a contiguous quarter of the
// row (in 16-byte loads that bypass L1: the weights are read once) against every token's x (cached); the quarters'
// sums meet in shared memory. Rows of a few MB give thousands of warps, enough loads in flight to approach the copy
// bandwidth. WholeRows (below): a warp per two whole rows. The epilogues (gemv.h) run in the blocks that finish last:
// the residual add + RMSNorm of a row of a few thousand elements (about a microsecond), the q/k norm + RoPE of a head,
// the MoE routing of a token, each where a kernel of its own cost a launch and a drain of the chain.
#include <cuda_bf16.h>

#include "cuda_common.cuh"
#include "last_block_add_norm.cuh"
#include "moe_router_warp.cuh"
#include "rtp/kernels/gemv.h"

namespace rtp::kernels {

namespace {

using namespace cuda_detail;

constexpr int kWarpsPerRow = 4;
constexpr int kRowsPerBlock = 2;
constexpr int kThreads = 32 * kWarpsPerRow * kRowsPerBlock;

// The add + RMSNorm epilogue: last_block_add_norm.cuh, with this kernel's block of kThreads.
template <typename T>
__device__ __forceinline__ void add_rms_norm_of_out(const GemvCore& p) {
  add_rms_norm_rows<T, kThreads>(AddNormRows<T>{static_cast<const T*>(p.out), static_cast<const T*>(p.residual),
                                                static_cast<const T*>(p.norm_weight), static_cast<T*>(p.sum_out),
                                                static_cast<T*>(p.normed_out), p.rows, p.m, p.eps});
}

// q/k norm + RoPE of head g (a q head, then the k heads) for every row, as norm_rope.cu's norm_row computes it, so the
// bits are the same: the sum of squares by its first kNormRopeThreads threads, element i with i + kNormRopeThreads...
// (norm_rope.cu's block width), then each element's normed value, then the rotation from the normed pair. out is read
// through L2 (other blocks of the launch wrote it), once per element; the weights and the first position's tables
// were requested before the count (HeadOperands), so that the head's last block starts on the tail at once.
constexpr int kNormRopeThreads = 128;
constexpr int kHeadSlots = 2;  // elements per thread: head_dim <= kGemvEpilogueMaxHeadDim = 2 x kThreads
static_assert(kHeadSlots * kThreads >= kGemvEpilogueMaxHeadDim, "a thread holds at most kHeadSlots of a head");

struct HeadOperands {
  float w[kHeadSlots], c[kHeadSlots], s[kHeadSlots];  // element threadIdx.x + j * blockDim.x; c, s at position 0
};

template <typename T>
__device__ __forceinline__ HeadOperands load_head_operands(const GemvHeadNormRope& h, int64_t g) {
  const T* w = static_cast<const T*>(g < h.q_heads ? h.q_weight : h.k_weight);
  const auto round = [](float v) { return to_float(from_float<T>(v)); };
  HeadOperands o{};
#pragma unroll
  for (int j = 0; j < kHeadSlots; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < h.head_dim) o.w[j] = to_float(w[i]), o.c[j] = round(h.cos[i]), o.s[j] = round(h.sin[i]);
  }
  return o;
}

// The cache slot of the token store (GemvHeadNormRope::stores_token), -1 where there is none or it lies outside the
// cache.
__device__ __forceinline__ int64_t token_slot(const GemvHeadNormRope& h) {
  if (!h.position) return -1;  // no token store (check_gemv_params: the caches and position all or none)
  const int64_t slot = *h.position;
  return slot >= 0 && slot < h.capacity ? slot : -1;
}

template <typename T>
__device__ __forceinline__ void norm_rope_head(const GemvCore& p, const GemvHeadNormRope& h, int64_t g,
                                               const HeadOperands& o) {
  const bool is_q = g < h.q_heads;
  const int64_t slot = is_q ? -1 : token_slot(h);
  const int64_t head = is_q ? g : g - h.q_heads, heads = is_q ? h.q_heads : h.k_heads;
  const int D = int(h.head_dim), half = D / 2;
  const auto round = [](float v) { return to_float(from_float<T>(v)); };
  __shared__ float xs[kGemvEpilogueMaxHeadDim], normed_row[kGemvEpilogueMaxHeadDim];
  for (int64_t n = 0; n < p.rows; ++n) {
    const T* x = static_cast<const T*>(p.out) + n * p.m + g * D;
#pragma unroll
    for (int j = 0; j < kHeadSlots; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < D) xs[i] = to_float(__ldcg(x + i));
    }
    __syncthreads();
    float ss = 0.f;
    if (threadIdx.x < kNormRopeThreads)
      for (int i = threadIdx.x; i < D; i += kNormRopeThreads) ss += xs[i] * xs[i];
    const float r = rsqrtf(block_total(ss) * (1.f / static_cast<float>(D)) + h.eps);
    const int64_t at = (n * heads + head) * D;
    T* normed = static_cast<T*>(is_q ? h.q_normed : h.k_normed) + at;
#pragma unroll
    for (int j = 0; j < kHeadSlots; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < D) {
        const float v = round(o.w[j] * round(xs[i] * r));
        normed[i] = from_float<T>(v);
        normed_row[i] = v;
      }
    }
    __syncthreads();
    const int64_t t = n % h.seq_len;
    T* roped = static_cast<T*>(is_q ? h.q_roped : h.k_roped) + at;
    // The token store: k's roped row into the cache too (seq_len 1: row n is sequence n).
    T* cached = !is_q && slot >= 0 ? static_cast<T*>(h.k_cache) + ((n * heads + head) * h.capacity + slot) * D : nullptr;
#pragma unroll
    for (int j = 0; j < kHeadSlots; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < D) {
        const float c = t == 0 ? o.c[j] : round(h.cos[t * D + i]), s = t == 0 ? o.s[j] : round(h.sin[t * D + i]);
        const float v = normed_row[i];
        const float rotated = i < half ? round(-normed_row[i + half] * s) : round(normed_row[i - half] * s);
        const T r = from_float<T>(round(v * c) + rotated);
        roped[i] = r;
        if (cached) cached[i] = r;
      }
    }
    __syncthreads();  // xs, normed_row and block_total's buffer, before the next row
  }
}

// The token store's v rows of KV head `head` (out's columns after the q and k heads) into the cache, every row.
template <typename T>
__device__ __forceinline__ void store_v_head(const GemvCore& p, const GemvHeadNormRope& h, int64_t head) {
  const int64_t slot = token_slot(h);
  if (slot < 0) return;
  const int64_t D = h.head_dim;
  for (int64_t n = 0; n < p.rows; ++n) {
    const T* v = static_cast<const T*>(p.out) + n * p.m + (h.q_heads + h.k_heads + head) * D;
    T* cached = static_cast<T*>(h.v_cache) + ((n * h.k_heads + head) * h.capacity + slot) * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) cached[i] = __ldcg(v + i);
  }
}

// The MoE routing of every row's logits (out), a warp per row.
template <typename T, int kSlots>
__device__ __forceinline__ void route_rows(const GemvCore& p, const GemvMoeRoute& route) {
  const int64_t n = threadIdx.x >> 5;
  if (n >= p.rows) return;
  const T* l = static_cast<const T*>(p.out) + n * p.m;
  const int K = int(route.top_k);
  route_token_in_warp<T, kSlots>([&](int e) { return to_float(__ldcg(l + e)); }, int(p.m), K, route.norm_topk_prob,
                                 route.expert + n * K, static_cast<T*>(route.weight) + n * K);
}

enum Epilogue : int { kNoEpilogue, kAddNorm, kHeadNormRope, kMoeRoute, kSwiGlu };

// out[i] = s rounded to T, stored as T or (out_float32, no epilogue) as float32.
template <typename T, int kEpi>
__device__ __forceinline__ void store_out(const GemvCore& p, int64_t i, float s) {
  const T v = from_float<T>(s);
  if (kEpi == kNoEpilogue && p.out_float32) static_cast<float*>(p.out)[i] = to_float(v);
  else static_cast<T*>(p.out)[i] = v;
}

// The kernels' epilogue parameter: nothing for none and the add + RMSNorm (in GemvCore), the epilogue's own struct
// for the others.
struct NoEpilogueArgs {};
template <int kEpi>
struct EpilogueArgsOf {
  using type = NoEpilogueArgs;
};
template <>
struct EpilogueArgsOf<kHeadNormRope> {
  using type = GemvHeadNormRope;
};
template <>
struct EpilogueArgsOf<kMoeRoute> {
  using type = GemvMoeRoute;
};
template <int kEpi>
using EpilogueArgs = typename EpilogueArgsOf<kEpi>::type;

// After a block has written its rows [first_row, first_row + rows_per_block): the launch's epilogue, by the blocks that
// finish last (the whole grid's last one, or a head's last one).
template <typename T, int kEpi>
__device__ __forceinline__ void finish_block(const GemvCore& p, const EpilogueArgs<kEpi>& e, int64_t first_row,
                                             int rows_per_block) {
  if constexpr (kEpi == kAddNorm) {
    if (last_to_finish(p.done, gridDim.x)) add_rms_norm_of_out<T>(p);
  } else if constexpr (kEpi == kHeadNormRope) {
    const int64_t g = first_row / e.head_dim;  // the block's rows lie in one head (head_dim % rows_per_block == 0)
    if (g >= e.q_heads + e.k_heads) {          // v: with the token store, its head's last block stores it
      if (e.position && g < e.q_heads + 2 * e.k_heads &&
          last_to_finish(e.done + g, uint32_t(e.head_dim / rows_per_block)))
        store_v_head<T>(p, e, g - e.q_heads - e.k_heads);
      return;
    }
    const HeadOperands o = load_head_operands<T>(e, g);
    if (last_to_finish(e.done + g, uint32_t(e.head_dim / rows_per_block))) norm_rope_head<T>(p, e, g, o);
  } else if constexpr (kEpi == kMoeRoute) {
    if (!last_to_finish(e.done, gridDim.x)) return;
    if (p.m <= 32) route_rows<T, 1>(p, e);
    else if (p.m <= 64) route_rows<T, 2>(p, e);
    else if (p.m <= 128) route_rows<T, 4>(p, e);
    else if (p.m <= 256) route_rows<T, 8>(p, e);
    else route_rows<T, 16>(p, e);
  }
}

template <typename T, int kRows, bool kVec, int kEpi>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const GemvCore p, const EpilogueArgs<kEpi> e) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int row_in_block = warp / kWarpsPerRow, quarter = warp % kWarpsPerRow;
  const int64_t m = int64_t(blockIdx.x) * kRowsPerBlock + row_in_block;
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight) + m * p.k;
  float acc[kRows];
#pragma unroll
  for (int n = 0; n < kRows; ++n) acc[n] = 0.f;
  // Vector path: this lane's first kPre weight vectors are requested before the wait for x (the previous kernel's
  // output; the weights are constant), so with programmatic launch they arrive while that kernel ends. All of them for
  // k <= 4096 (a 4096-wide row is 128 vectors per quarter, 4 per lane).
  constexpr int kPre = 4;
  constexpr int kPerVec = 16 / sizeof(T);
  const int64_t n16 = p.k / kPerVec, per16 = (n16 + kWarpsPerRow - 1) / kWarpsPerRow;
  const int64_t begin16 = quarter * per16, end16 = begin16 + per16 < n16 ? begin16 + per16 : n16;
  const auto* w16 = reinterpret_cast<const uint4*>(w);
  uint4 pre[kPre] = {};
  if constexpr (kVec) {
#pragma unroll
    for (int u = 0; u < kPre; ++u)
      if (m < p.m && begin16 + lane + 32 * u < end16) pre[u] = __ldcs(w16 + begin16 + lane + 32 * u);
  }
  pdl_wait_then_trigger();
  if (m < p.m) {
    if constexpr (kVec) {
      // The same products in the same order as one loop over i.
#pragma unroll
      for (int u = 0; u < kPre; ++u) {
        const int64_t i = begin16 + lane + 32 * u;
        if (i < end16) {
#pragma unroll
          for (int n = 0; n < kRows; ++n)
            acc[n] += dot_16bytes<T>(pre[u], __ldg(reinterpret_cast<const uint4*>(x + n * p.x_row_stride) + i));
        }
      }
#pragma unroll 4
      for (int64_t i = begin16 + lane + 32 * kPre; i < end16; i += 32) {
        const uint4 wv = __ldcs(w16 + i);
#pragma unroll
        for (int n = 0; n < kRows; ++n)
          acc[n] += dot_16bytes<T>(wv, __ldg(reinterpret_cast<const uint4*>(x + n * p.x_row_stride) + i));
      }
    } else {
      const int64_t per = (p.k + kWarpsPerRow - 1) / kWarpsPerRow;
      const int64_t begin = quarter * per, end = begin + per < p.k ? begin + per : p.k;
      for (int64_t i = begin + lane; i < end; i += 32) {
        const float wv = to_float(w[i]);
#pragma unroll
        for (int n = 0; n < kRows; ++n) acc[n] += wv * to_float(x[n * p.x_row_stride + i]);
      }
    }
  }
  __shared__ float part[kRowsPerBlock][kWarpsPerRow][kRows];
#pragma unroll
  for (int n = 0; n < kRows; ++n) {
    const float v = warp_sum(acc[n]);
    if (lane == 0) part[row_in_block][quarter][n] = v;
  }
  __syncthreads();
  if (quarter == 0 && lane < kRows && m < p.m) {
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < kWarpsPerRow; ++q) s += part[row_in_block][q][lane];
    store_out<T, kEpi>(p, lane * p.m + m, s);
  }
  finish_block<T, kEpi>(p, e, int64_t(blockIdx.x) * kRowsPerBlock, kRowsPerBlock);
}

// WholeRows: each warp takes kRowsPerWarp whole rows, so every x vector it loads serves all of them and its sums are
// final after one warp reduction. Eight warps per block as above. With SwiGLU a warp's two rows are gate row i and up
// row m / 2 + i (i its index in the grid), so the activation is the warp's own; each row's sum is the same as in
// the plain layout (its lanes' order does not depend on the other row), so the bits are a plain gate/up launch's.
constexpr int kRowsPerWarp = 2;
constexpr int kWholeRowsPerBlock = kRowsPerWarp * kThreads / 32;
static_assert(kRowsPerWarp == 2, "SwiGLU pairs a warp's two rows");

// silu(g) * u with g and u the projection's values in the element type, as swiglu.cu: silu rounded, then the product.
template <typename T>
__device__ __forceinline__ T swiglu_of(float g_sum, float u_sum) {
  const float g = to_float(from_float<T>(g_sum)), u = to_float(from_float<T>(u_sum));
  return from_float<T>(to_float(from_float<T>(g / (1.f + expf(-g)))) * u);
}

template <typename T, int kRows, bool kVec, int kEpi>
__global__ void __launch_bounds__(kThreads) gemv_whole_rows_kernel(const GemvCore p, const EpilogueArgs<kEpi> e) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t warp_index = int64_t(blockIdx.x) * (kThreads / 32) + warp;
  const int64_t m0 = warp_index * kRowsPerWarp;
  const int64_t half = p.m / 2;  // SwiGLU: the gate rows, then the up rows
  const T* x = static_cast<const T*>(p.x);
  int64_t row[kRowsPerWarp];
  bool valid[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row[r] = kEpi == kSwiGlu ? r * half + warp_index : m0 + r;
    valid[r] = kEpi == kSwiGlu ? warp_index < half : m0 + r < p.m;
  }
  float acc[kRowsPerWarp][kRows];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int n = 0; n < kRows; ++n) acc[r][n] = 0.f;
  if constexpr (kVec) {
    constexpr int kPerVec = 16 / sizeof(T);
    const int64_t n16 = p.k / kPerVec;
    const uint4* w16[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      w16[r] = reinterpret_cast<const uint4*>(static_cast<const T*>(p.weight) + (valid[r] ? row[r] : 0) * p.k);
    // As in the split layout: the first weight vectors of every row are requested before the wait for x; a 1024-wide
    // row is 4 vectors per lane, all of it.
    constexpr int kPre = 4;
    uint4 pre[kPre][kRowsPerWarp] = {};
#pragma unroll
    for (int u = 0; u < kPre; ++u)
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
        if (valid[r] && lane + 32 * u < n16) pre[u][r] = __ldcs(w16[r] + lane + 32 * u);
    pdl_wait_then_trigger();
#pragma unroll
    for (int u = 0; u < kPre; ++u) {
      const int64_t i = lane + 32 * u;
      if (i < n16) {
#pragma unroll
        for (int n = 0; n < kRows; ++n) {
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + n * p.x_row_stride) + i);
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) acc[r][n] += dot_16bytes<T>(pre[u][r], xv);
        }
      }
    }
#pragma unroll 2
    for (int64_t i = lane + 32 * kPre; i < n16; i += 32) {
      uint4 wv[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) wv[r] = valid[r] ? __ldcs(w16[r] + i) : uint4{};
#pragma unroll
      for (int n = 0; n < kRows; ++n) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + n * p.x_row_stride) + i);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) acc[r][n] += dot_16bytes<T>(wv[r], xv);
      }
    }
  } else {
    pdl_wait_then_trigger();
    const T* w = static_cast<const T*>(p.weight);
    for (int64_t i = lane; i < p.k; i += 32) {
      float wv[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) wv[r] = valid[r] ? to_float(w[row[r] * p.k + i]) : 0.f;
#pragma unroll
      for (int n = 0; n < kRows; ++n) {
        const float xv = to_float(x[n * p.x_row_stride + i]);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) acc[r][n] += wv[r] * xv;
      }
    }
  }
  float sum[kRowsPerWarp][kRows];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int n = 0; n < kRows; ++n) sum[r][n] = warp_sum(acc[r][n]);
  if (lane == 0) {
#pragma unroll
    for (int n = 0; n < kRows; ++n) {
      if constexpr (kEpi == kSwiGlu) {
        if (valid[0]) static_cast<T*>(p.out)[n * half + warp_index] = swiglu_of<T>(sum[0][n], sum[1][n]);
      } else {
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
          if (valid[r]) store_out<T, kEpi>(p, n * p.m + row[r], sum[r][n]);
      }
    }
  }
  static_assert(kEpi != kAddNorm, "the add + RMSNorm epilogue runs with the split layout");
  finish_block<T, kEpi>(p, e, int64_t(blockIdx.x) * kWholeRowsPerBlock, kWholeRowsPerBlock);
}

template <int kEpi>
EpilogueArgs<kEpi> epilogue_args(const GemvParams& p) {
  if constexpr (kEpi == kHeadNormRope) return p.head_norm_rope;
  else if constexpr (kEpi == kMoeRoute) return p.moe_route;
  else return NoEpilogueArgs{};
}

template <typename T, int kRows, int kEpi>
cudaError_t launch_epilogue(const GemvParams& p, bool vec, cudaStream_t stream) {
  const GemvCore& core = p;
  const EpilogueArgs<kEpi> e = epilogue_args<kEpi>(p);
  if constexpr (kEpi != kAddNorm) {
    // SwiGLU: WholeRows always (check_gemv_params); its m / 2 warps are the plain layout's m / 2 rows' worth of blocks.
    if (kEpi == kSwiGlu || resolved_layout(p) == GemvLayout::WholeRows) {
      const unsigned blocks = unsigned((p.m + kWholeRowsPerBlock - 1) / kWholeRowsPerBlock);
      return launch_k(vec ? gemv_whole_rows_kernel<T, kRows, true, kEpi> : gemv_whole_rows_kernel<T, kRows, false, kEpi>,
                      dim3(blocks), dim3(kThreads), 0, stream, programmatic_launch_available(), core, e);
    }
  }
  if constexpr (kEpi == kSwiGlu) {
    return cudaErrorInvalidValue;  // not reached: SwiGLU took the branch above
  } else {
    const unsigned blocks = unsigned((p.m + kRowsPerBlock - 1) / kRowsPerBlock);
    return launch_k(vec ? gemv_kernel<T, kRows, true, kEpi> : gemv_kernel<T, kRows, false, kEpi>, dim3(blocks),
                    dim3(kThreads), 0, stream, programmatic_launch_available(), core, e);
  }
}

template <typename T, int kRows>
cudaError_t launch_rows(const GemvParams& p, bool vec, cudaStream_t stream) {
  if (p.has_add_norm()) return launch_epilogue<T, kRows, kAddNorm>(p, vec, stream);
  if (p.head_norm_rope.active()) return launch_epilogue<T, kRows, kHeadNormRope>(p, vec, stream);
  if (p.moe_route.active()) return launch_epilogue<T, kRows, kMoeRoute>(p, vec, stream);
  if (p.swiglu) return launch_epilogue<T, kRows, kSwiGlu>(p, vec, stream);
  return launch_epilogue<T, kRows, kNoEpilogue>(p, vec, stream);
}

template <typename T>
cudaError_t launch(const GemvParams& p, cudaStream_t stream) {
  constexpr int kPerVec = 16 / sizeof(T);
  const auto aligned = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; };
  const bool vec = p.k % kPerVec == 0 && p.x_row_stride % kPerVec == 0 && aligned(p.x) && aligned(p.weight);
  switch (p.rows) {
    case 1: return launch_rows<T, 1>(p, vec, stream);
    case 2: return launch_rows<T, 2>(p, vec, stream);
    case 3: return launch_rows<T, 3>(p, vec, stream);
    default: return launch_rows<T, 4>(p, vec, stream);
  }
}

}  // namespace

cudaError_t gemv_cuda(const GemvParams& p, cudaStream_t stream) {
  if (*check_gemv_params(p, true) || p.m > int64_t(0x7fffffff) * kRowsPerBlock) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

}  // namespace rtp::kernels
