// RMSNorm (+ RoPE) of rows (norm_rope.h): one thread block per row; the sum of squares reduced across the block,
// then each thread writes its elements (with RoPE: the pairs i and i + dim/2, which rotate into each other).
// Rows without RoPE (the hidden-size norms, one row per token in a decode step) keep the row in registers, at most
// kPerThread elements per thread with the block sized to the row: a 4096-wide row read in a loop of 32 dependent
// iterations by 128 threads is latency-bound (some 10 us per pass, three passes with a residual add). Many such rows
// (a prefill chunk) go by 16-byte vectors; q/k heads of a prefill chunk a warp per row.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "cuda_common.cuh"
#include "rtp/kernels/norm_rope.h"

namespace rtp::kernels {

namespace {

using cuda_detail::block_total;
using cuda_detail::launch_k;
using cuda_detail::pdl_wait_then_trigger;
using cuda_detail::programmatic_launch_available;

constexpr int kThreads = 128;

template <typename T>
struct Num;
template <>
struct Num<float> {
  static __device__ __forceinline__ float get(float v) { return v; }
  static __device__ __forceinline__ float round(float v) { return v; }
  static __device__ __forceinline__ float put(float v) { return v; }
};
template <>
struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float get(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ __nv_bfloat16 put(float v) { return __float2bfloat16_rn(v); }
};

constexpr int kPerThread = 8;
constexpr int kMaxRowThreads = 1024;

// A row without RoPE held in registers: element i of the row is thread i % blockDim's k-th, k = i / blockDim, so
// the warp's loads are coalesced and all kPerThread of them are issued before the first is used.
template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_row_in_registers_kernel(const RmsNormParams p) {
  using N = Num<T>;
  pdl_wait_then_trigger();
  const int64_t row = blockIdx.x, D = p.dim;
  const T* x = static_cast<const T*>(p.x) + row * D;
  const T* res = p.residual ? static_cast<const T*>(p.residual) + row * D : nullptr;
  T* sum = p.residual ? static_cast<T*>(p.sum_out) + row * D : nullptr;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out) + row * D;
  float v[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
    v[k] = i < D ? N::get(x[i]) : 0.f;
  }
  if (res) {
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i < D) {
        v[k] = N::round(v[k] + N::get(res[i]));  // as the eager add leaves it
        sum[i] = N::put(v[k]);
      }
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) ss += v[k] * v[k];
  const float r = rsqrtf(block_total(ss) * (1.f / static_cast<float>(D)) + p.eps);
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
    if (i < D) out[i] = N::put(N::get(w[i]) * N::round(v[k] * r));
  }
}

// Many rows of a hidden-size norm (a prefill chunk's tokens): 16-byte loads and stores, thread t holding elements
// [8t, 8t + 8). The kernel above, with 2-byte accesses, moved 4096 rows of 4096 with the residual (128 MB) at 1.2 TB/s
// on an H100. The sum of squares runs in another order than above (and than the GEMV's add + norm epilogue, which
// copies that order), so only calls of at least kVectorRowsMin rows take it: a decode step's norms keep their bits.
constexpr int kVectorRowsMin = 16;
constexpr int kVectorElems = 8;
static_assert(kVectorElems == kPerThread, "the vector kernel takes the block size of the kernel above");

template <typename T>
struct Vector8 {
  static constexpr int kWords = kVectorElems * int(sizeof(T)) / 16;  // uint4 words: 1 for bf16, 2 for float
  uint4 raw[kWords];
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int w = 0; w < kWords; ++w) raw[w] = reinterpret_cast<const uint4*>(p)[w];
  }
  __device__ __forceinline__ void store(T* p) const {
#pragma unroll
    for (int w = 0; w < kWords; ++w) reinterpret_cast<uint4*>(p)[w] = raw[w];
  }
  __device__ __forceinline__ T& operator[](int j) { return reinterpret_cast<T*>(raw)[j]; }
};

template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_row_vectors_kernel(const RmsNormParams p) {
  using N = Num<T>;
  pdl_wait_then_trigger();
  const int64_t row = blockIdx.x, D = p.dim, i = int64_t(threadIdx.x) * kVectorElems;
  const bool mine = i < D;
  float v[kVectorElems] = {};
  if (mine) {
    Vector8<T> x;
    x.load(static_cast<const T*>(p.x) + row * D + i);
#pragma unroll
    for (int j = 0; j < kVectorElems; ++j) v[j] = N::get(x[j]);
    if (p.residual) {
      Vector8<T> r, s;
      r.load(static_cast<const T*>(p.residual) + row * D + i);
#pragma unroll
      for (int j = 0; j < kVectorElems; ++j) {
        v[j] = N::round(v[j] + N::get(r[j]));  // as the eager add leaves it
        s[j] = N::put(v[j]);
      }
      s.store(static_cast<T*>(p.sum_out) + row * D + i);
    }
  }
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kVectorElems; ++j) ss += v[j] * v[j];
  const float r = rsqrtf(block_total(ss) * (1.f / static_cast<float>(D)) + p.eps);
  if (mine) {
    Vector8<T> w, o;
    w.load(static_cast<const T*>(p.weight) + i);
#pragma unroll
    for (int j = 0; j < kVectorElems; ++j) o[j] = N::put(N::get(w[j]) * N::round(v[j] * r));
    o.store(static_cast<T*>(p.out) + row * D + i);
  }
}

bool row_vectors_apply(const RmsNormParams& p) {
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return p.rows >= kVectorRowsMin && p.dim % kVectorElems == 0 && p.dim <= int64_t(kVectorElems) * kMaxRowThreads &&
         aligned(p.x) && aligned(p.weight) && aligned(p.out) &&
         (!p.residual || (aligned(p.residual) && aligned(p.sum_out)));
}

// Element i < half of a row and its partner i + half: both normed (x0, x1 the row's values, r its rsqrt) and written,
// then rotated from the normed pair (the header's rounding points). Every kernel with RoPE here ends in this.
template <typename T>
__device__ __forceinline__ void norm_rotate_pair(const T* w, const float* c, const float* s,
                                                 T* out, T* rope, int64_t i, int64_t half, float x0, float x1, float r) {
  using N = Num<T>;
  const float n0 = N::round(N::get(w[i]) * N::round(x0 * r));
  const float n1 = N::round(N::get(w[i + half]) * N::round(x1 * r));
  out[i] = N::put(n0);
  out[i + half] = N::put(n1);
  const float c0 = N::round(c[i]), s0 = N::round(s[i]), c1 = N::round(c[i + half]), s1 = N::round(s[i + half]);
  rope[i] = N::put(N::round(n0 * c0) + N::round(-n1 * s0));
  rope[i + half] = N::put(N::round(n1 * c1) + N::round(n0 * s1));
}

// One row of p: block-wide, so every thread of the block calls it.
template <typename T, bool kRope>
__device__ __forceinline__ void norm_row(const RmsNormParams& p, int64_t row) {
  using N = Num<T>;
  const int64_t D = p.dim;
  const int64_t stride = p.x_token_stride ? p.x_token_stride : p.heads * D;
  const T* x = static_cast<const T*>(p.x) + (row / p.heads) * stride + (row % p.heads) * D;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out) + row * D;
  const T* res = p.residual ? static_cast<const T*>(p.residual) + row * D : nullptr;
  // With a residual the row is round(x + residual), as the eager add leaves it; each thread re-reads only the
  // elements it wrote itself, so no barrier is needed between the two passes.
  if (res) {
    T* sum = static_cast<T*>(p.sum_out) + row * D;
    for (int64_t i = threadIdx.x; i < D; i += kThreads) sum[i] = N::put(N::get(x[i]) + N::get(res[i]));
    x = sum;
  }
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += kThreads) {
    const float v = N::get(x[i]);
    ss += v * v;
  }
  // As the eager ops: mean as sum times 1/D, plus eps, then rsqrt (all float32).
  const float r = rsqrtf(block_total(ss) * (1.f / static_cast<float>(D)) + p.eps);
  if constexpr (!kRope) {
    for (int64_t i = threadIdx.x; i < D; i += kThreads) out[i] = N::put(N::get(w[i]) * N::round(N::get(x[i]) * r));
  } else {
    const int64_t half = D / 2, t = (row / p.heads) % p.seq_len;
    const float* c = p.cos + t * D;
    const float* s = p.sin + t * D;
    T* rope = static_cast<T*>(p.rope_out) + row * D;
    for (int64_t i = threadIdx.x; i < half; i += kThreads)
      norm_rotate_pair<T>(w, c, s, out, rope, i, half, N::get(x[i]), N::get(x[i + half]), r);
  }
}

template <typename T, bool kRope>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(const RmsNormParams p) {
  pdl_wait_then_trigger();
  norm_row<T, kRope>(p, blockIdx.x);
}

// Blocks [0, a.rows) take a's rows, the rest b's: q and k of a layer in one launch.
template <typename T, bool kRope>
__global__ void __launch_bounds__(kThreads) rms_norm_pair_kernel(const RmsNormParams a, const RmsNormParams b) {
  pdl_wait_then_trigger();
  const int64_t row = blockIdx.x;
  if (row < a.rows) norm_row<T, kRope>(a, row);
  else norm_row<T, kRope>(b, row - a.rows);
}

// A warp per row for rows of at most kWarpRowMaxDim elements (q/k heads: a prefill chunk has tens of thousands). A
// block per row left such rows latency-bound: 176 us for a 4096-token chunk's 24 heads of 128 on an H100 (a load,
// a block-wide sum with its barrier, the stores, for 1.5 KB of traffic), where the bytes take some 25. The bits are
// norm_row's: lane l holds elements l + 32k, and element i's square goes to the partial sum that norm_row's thread
// i % kThreads makes (partial[w] gathers k = w, w + 4, ... in that order), each partial summed across the warp as
// block_total sums a warp, then the four partials in warp order, as block_total adds them.
constexpr int kWarpRowMaxDim = 256;
constexpr int kWarpSlots = kWarpRowMaxDim / 32;
constexpr int kBlockWarps = kThreads / 32;
constexpr int kWarpRowsPerBlock = 4;
static_assert(kWarpSlots % kBlockWarps == 0, "a lane's slots cover norm_row's warps evenly");

// A row's elements into the lane's slots (lane l: elements l + 32k), apart from the rest so that a warp with two rows
// has both rows' loads in flight before either is used.
template <typename T, int kSlots>
__device__ __forceinline__ void load_warp_row(const RmsNormParams& p, int64_t row, float (&v)[kSlots]) {
  using N = Num<T>;
  const int lane = threadIdx.x % 32;
  const int64_t D = p.dim;
  const int64_t stride = p.x_token_stride ? p.x_token_stride : p.heads * D;
  const T* x = static_cast<const T*>(p.x) + (row / p.heads) * stride + (row % p.heads) * D;
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int64_t i = lane + 32 * k;
    v[k] = i < D ? N::get(x[i]) : 0.f;
  }
}

// The rest of a row from its loaded slots. kPartner: 0 without RoPE, else dim / 64, the slots between element i and its
// partner i + dim / 2 (a compile-time count keeps v in registers; a run-time one put it in local memory).
template <typename T, int kPartner, int kSlots>
__device__ __forceinline__ void finish_warp_row(const RmsNormParams& p, int64_t row, float (&v)[kSlots]) {
  using N = Num<T>;
  const int lane = threadIdx.x % 32;
  const int64_t D = p.dim;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out) + row * D;
  if (p.residual) {
    const T* res = static_cast<const T*>(p.residual) + row * D;
    T* sum = static_cast<T*>(p.sum_out) + row * D;
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int64_t i = lane + 32 * k;
      if (i < D) {
        v[k] = N::round(v[k] + N::get(res[i]));
        sum[i] = N::put(v[k]);
      }
    }
  }
  float partial[kBlockWarps];
#pragma unroll
  for (int b = 0; b < kBlockWarps; ++b) {
    partial[b] = 0.f;
#pragma unroll
    for (int k = b; k < kSlots; k += kBlockWarps) partial[b] += v[k] * v[k];
  }
  float total = 0.f;
#pragma unroll
  for (int b = 0; b < kBlockWarps; ++b) total += cuda_detail::warp_sum(partial[b]);
  const float r = rsqrtf(total * (1.f / static_cast<float>(D)) + p.eps);
  if constexpr (kPartner == 0) {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int64_t i = lane + 32 * k;
      if (i < D) out[i] = N::put(N::get(w[i]) * N::round(v[k] * r));
    }
  } else {
    static_assert(2 * kPartner <= kSlots, "a row and its partners fit the lane's slots");
    const int64_t half = D / 2, t = (row / p.heads) % p.seq_len;
    const float* c = p.cos + t * D;
    const float* s = p.sin + t * D;
    T* rope = static_cast<T*>(p.rope_out) + row * D;
#pragma unroll
    for (int k = 0; k < kPartner; ++k)
      norm_rotate_pair<T>(w, c, s, out, rope, lane + 32 * k, half, v[k], v[k + kPartner], r);
  }
}

// Rows [0, a.rows) are a's, the next b.rows b's (b.rows 0 for one norm), kRows consecutive rows per warp and
// kWarpRowsPerBlock warps per block. Two rows per warp for a prefill chunk's heads: with one, a warp's 256 bytes of a
// bf16 row in flight (64 warps an SM) fall short of what the memory's latency needs (30B-A3B's q/k norm + RoPE of a
// 32K prefill: 26 ms, some 37% of copy bandwidth, H100 trace). Each row's arithmetic is the one-row kernel's.
// Registers (sm_90a, bf16, head_dim 128 with RoPE): 40 for two rows (48 warps an SM, 96 rows in flight) against 32
// for one (64 warps, 64 rows); a bound to 32 spills.
template <typename T, int kPartner, int kRows>
__global__ void __launch_bounds__(kWarpRowsPerBlock * 32) rms_norm_warp_rows_kernel(const RmsNormParams a,
                                                                                   const RmsNormParams b) {
  pdl_wait_then_trigger();
  const int64_t first = (int64_t(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / 32) * kRows;
  const int64_t total = a.rows + b.rows;
  // Selected by branches, not a reference to a or b: taking a kernel parameter's address copies it to local memory.
  // A lane's slots: the row's elements l + 32k, k < D / 32, D known at compile time with RoPE (64 kPartner).
  constexpr int kSlots = kPartner ? 2 * kPartner : kWarpSlots;
  float v[kRows][kSlots];
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const int64_t row = first + j;
    if (row < a.rows) load_warp_row<T, kSlots>(a, row, v[j]);
    else if (row < total) load_warp_row<T, kSlots>(b, row - a.rows, v[j]);
  }
#pragma unroll
  for (int j = 0; j < kRows; ++j) {
    const int64_t row = first + j;
    if (row < a.rows) finish_warp_row<T, kPartner, kSlots>(a, row, v[j]);
    else if (row < total) finish_warp_row<T, kPartner, kSlots>(b, row - a.rows, v[j]);
  }
}

// From this many rows (a prefill chunk's heads; a decode step has tens) two rows per warp: half the warps, twice the
// loads in flight in each.
constexpr int64_t kTwoRowsPerWarpMin = 4096;

// Rows of at most kWarpRowMaxDim elements; with RoPE, each element's partner (i + dim / 2) in the same lane.
bool warp_rows_apply(const RmsNormParams& p) {
  return p.dim <= kWarpRowMaxDim && (!p.cos || p.dim % 64 == 0);
}

template <typename T>
cudaError_t launch_warp_rows(const RmsNormParams& a, const RmsNormParams& b, cudaStream_t stream) {
  const int64_t rows = a.rows + b.rows;
  const int per_warp = rows >= kTwoRowsPerWarpMin ? 2 : 1;
  const unsigned blocks = unsigned((rows + kWarpRowsPerBlock * per_warp - 1) / (kWarpRowsPerBlock * per_warp));
  using Kernel = void (*)(const RmsNormParams, const RmsNormParams);
  // [rows per warp - 1][partner slots: 0 without RoPE, else dim / 64]
  const Kernel kernels[2][5] = {
      {rms_norm_warp_rows_kernel<T, 0, 1>, rms_norm_warp_rows_kernel<T, 1, 1>, rms_norm_warp_rows_kernel<T, 2, 1>,
       rms_norm_warp_rows_kernel<T, 3, 1>, rms_norm_warp_rows_kernel<T, 4, 1>},
      {rms_norm_warp_rows_kernel<T, 0, 2>, rms_norm_warp_rows_kernel<T, 1, 2>, rms_norm_warp_rows_kernel<T, 2, 2>,
       rms_norm_warp_rows_kernel<T, 3, 2>, rms_norm_warp_rows_kernel<T, 4, 2>}};
  const int partner = !a.cos ? 0 : int(a.dim / 64);
  return launch_k(kernels[per_warp - 1][partner], dim3(blocks), dim3(kWarpRowsPerBlock * 32), 0, stream,
                  programmatic_launch_available(), a, b);
}

template <typename T>
cudaError_t launch(const RmsNormParams& p, cudaStream_t stream) {
  const bool pdl = programmatic_launch_available();
  const bool contiguous_rows = p.x_token_stride == 0 || p.x_token_stride == p.heads * p.dim;
  if (!p.cos && contiguous_rows && p.dim <= int64_t(kPerThread) * kMaxRowThreads) {
    const int64_t threads = (p.dim + kPerThread - 1) / kPerThread;
    const unsigned block = unsigned(std::max<int64_t>(64, (threads + 31) / 32 * 32));
    if (row_vectors_apply(p))  // kVectorElems == kPerThread: the same block size
      return launch_k(rms_norm_row_vectors_kernel<T>, dim3(unsigned(p.rows)), dim3(block), 0, stream, pdl, p);
    return launch_k(rms_norm_row_in_registers_kernel<T>, dim3(unsigned(p.rows)), dim3(block), 0, stream, pdl, p);
  }
  if (warp_rows_apply(p)) return launch_warp_rows<T>(p, RmsNormParams{}, stream);
  return launch_k(p.cos ? rms_norm_kernel<T, true> : rms_norm_kernel<T, false>, dim3(unsigned(p.rows)), dim3(kThreads),
                  0, stream, pdl, p);
}

template <typename T>
cudaError_t launch_pair(const RmsNormParams& a, const RmsNormParams& b, cudaStream_t stream) {
  if (warp_rows_apply(a) && warp_rows_apply(b) && a.dim == b.dim) return launch_warp_rows<T>(a, b, stream);
  const unsigned blocks = unsigned(a.rows + b.rows);
  return launch_k(a.cos ? rms_norm_pair_kernel<T, true> : rms_norm_pair_kernel<T, false>, dim3(blocks),
                  dim3(kThreads), 0, stream, programmatic_launch_available(), a, b);
}

}  // namespace

cudaError_t rms_norm_cuda(const RmsNormParams& p, cudaStream_t stream) {
  if (*check_rms_norm_params(p, true) || p.rows > 0x7fffffff) return cudaErrorInvalidValue;
  return p.dtype == DType::BF16 ? launch<__nv_bfloat16>(p, stream) : launch<float>(p, stream);
}

cudaError_t rms_norm_pair_cuda(const RmsNormParams& a, const RmsNormParams& b, cudaStream_t stream) {
  if (*check_rms_norm_params(a, true) || *check_rms_norm_params(b, true) || a.dtype != b.dtype ||
      !a.cos != !b.cos || a.rows + b.rows > 0x7fffffff)
    return cudaErrorInvalidValue;
  return a.dtype == DType::BF16 ? launch_pair<__nv_bfloat16>(a, b, stream) : launch_pair<float>(a, b, stream);
}

}  // namespace rtp::kernels
