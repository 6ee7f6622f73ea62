#pragma once
// The epilogue that turns a projection's launch into "projection, residual add, RMSNorm": once every block of the
// launch has written its outputs, the block that finishes last (last_to_finish) computes the add and the norm of the
// whole rows (add_rms_norm_rows). Used by the GEMV (gemv.cu, after an o or dense down projection) and by the MoE
// down pass (moe_decode.cu), each a kernel boundary less per decoder layer.
#include <cstdint>

#include "cuda_common.cuh"

namespace rtp::kernels::cuda_detail {

// atomicAdd with acquire-release order at device scope (PTX atom.acq_rel.gpu): the release publishes what the block
// wrote before its barrier (cumulative through it), the acquire lets the last block see every other block's writes.
__device__ __forceinline__ uint32_t atomic_add_acq_rel(uint32_t* p, uint32_t v) {
  uint32_t old;
  asm volatile("atom.add.acq_rel.gpu.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}

// The last-block pattern: once all its threads have written (the barrier), the block counts itself with one
// acquire-release atomic; the block that completes the count (of `blocks`) sees every counted block's outputs, and
// resets it for the next launch (nothing else touches it before this kernel ends). One atomic per block where a fence
// in every thread and a relaxed atomic did the same: the fences were a per-block cost of the epilogue. Every thread
// of the block must call it.
__device__ __forceinline__ bool last_to_finish(uint32_t* count, uint32_t blocks) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomic_add_acq_rel(count, 1u) == blocks - 1;
    if (last) *count = 0u;
  }
  __syncthreads();
  return last;
}

// What the add + norm reads and writes: rows x m, each contiguous.
template <typename T>
struct AddNormRows {
  const T* out;       // the projection, written by the launch's other blocks
  const T* residual;
  const T* weight;    // [m]
  T* sum;             // round(out + residual)
  T* normed;          // weight * round(sum * rsqrt(mean(sum^2) + eps))
  int64_t rows, m;
  float eps;
};

// Per row, sum = round(out + residual), then RMSNorm of sum as the residual form of rms_norm (norm_rope.cu), each
// thread's elements (i, i + kThreads, ...) summed in the same order as there when kThreads is that kernel's block
// (256 for rows of 2048), so the bits are the same, for any kNormPer. out is read through L2 (__ldcg): other blocks
// wrote it. Loads go in batches of kNormPer per thread, all issued before the first use: this block runs alone at the
// end of the launch, and a loop of dependent load-use rounds (16 at 4096 wide) was the latency of the whole epilogue
// (Qwen3-8B, H200: 23.6 us fused against 12.1 + 4.1 apart). kNormPer 8 keeps the GEMV's registers near the plain
// kernel's (a 2048-wide row in one batch of 256 threads, its sums kept in registers for the norm); kernels with more
// registers live before it take fewer per batch.
template <typename T, int kThreads, int kNormPer = 8>
__device__ __forceinline__ void add_rms_norm_rows(const AddNormRows<T>& p) {
  constexpr int64_t kBatch = int64_t(kNormPer) * kThreads;
  const auto round = [](float v) { return to_float(from_float<T>(v)); };
  // The norm weights are used only after the block total, but they come from DRAM (a step streams gigabytes past L2
  // before a layer's norm comes round again): their lines are requested into L1 now, so their latency overlaps the
  // loads of out and residual (L2) instead of following them. A prefetch holds no registers (keeping w in registers
  // across the total spilled in the MoE one launch).
  for (int64_t line = threadIdx.x; line * 128 < p.m * int64_t(sizeof(T)); line += kThreads)
    asm volatile("prefetch.global.L1 [%0];" ::"l"(reinterpret_cast<const char*>(p.weight) + line * 128));
  for (int64_t n = 0; n < p.rows; ++n) {
    const int64_t row = n * p.m;
    float ss = 0.f;
    float v[kNormPer];
    for (int64_t base = 0; base < p.m; base += kBatch) {
      float o[kNormPer], r[kNormPer];
#pragma unroll
      for (int j = 0; j < kNormPer; ++j) {
        const int64_t i = base + threadIdx.x + j * kThreads;
        o[j] = i < p.m ? to_float(__ldcg(p.out + row + i)) : 0.f;
        r[j] = i < p.m ? to_float(p.residual[row + i]) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kNormPer; ++j) {
        const int64_t i = base + threadIdx.x + j * kThreads;
        v[j] = round(o[j] + r[j]);
        if (i < p.m) {
          p.sum[row + i] = from_float<T>(v[j]);
          ss += v[j] * v[j];
        }
      }
    }
    const float rs = rsqrtf(block_total(ss) * (1.f / static_cast<float>(p.m)) + p.eps);
    for (int64_t base = 0; base < p.m; base += kBatch) {
      float wv[kNormPer];
#pragma unroll
      for (int j = 0; j < kNormPer; ++j) {
        const int64_t i = base + threadIdx.x + j * kThreads;
        wv[j] = i < p.m ? to_float(p.weight[i]) : 0.f;
        // Wider rows than one batch: each thread re-reads only the sums it wrote.
        if (p.m > kBatch) v[j] = i < p.m ? to_float(p.sum[row + i]) : 0.f;
      }
#pragma unroll
      for (int j = 0; j < kNormPer; ++j) {
        const int64_t i = base + threadIdx.x + j * kThreads;
        if (i < p.m) p.normed[row + i] = from_float<T>(wv[j] * round(v[j] * rs));
      }
    }
    __syncthreads();  // block_total's buffer, before the next row
  }
}

}  // namespace rtp::kernels::cuda_detail
