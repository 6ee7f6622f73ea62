#pragma once
// Small device helpers shared by the kernels: mma.sync m16n8k16 bf16, ldmatrix, cp.async, warp reductions, bf16/float
// conversions and 16-byte dot products.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace rtp::kernels::cuda_detail {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (used for rows past the sequence end).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                                  uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D = A(16x16 bf16, row) * B(16x8 bf16, col) + D (fp32).
__device__ __forceinline__ void mma_bf16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x by the MUFU unit alone (flush-to-zero, ~2 ulp): exp2f adds a range check and two multiplies per call
// for denormal results, which attention weights rounded to bf16 do not need. 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// Inclusive prefix sum over the 32 lanes of a full warp.
template <typename T>
__device__ __forceinline__ T warp_inclusive_scan(T v) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
// float -> T (bf16: round to nearest even).
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// The dot product of two 16-byte vectors of T (4 float32 or 8 bf16) in float32, the elements summed in order.
template <typename T>
__device__ __forceinline__ float dot_16bytes(uint4 a, uint4 b);
template <>
__device__ __forceinline__ float dot_16bytes<float>(uint4 a, uint4 b) {
  return __uint_as_float(a.x) * __uint_as_float(b.x) + __uint_as_float(a.y) * __uint_as_float(b.y) +
         __uint_as_float(a.z) * __uint_as_float(b.z) + __uint_as_float(a.w) * __uint_as_float(b.w);
}
__device__ __forceinline__ float dot_bf16x2(uint32_t a, uint32_t b) {
  const float2 fa = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a));
  const float2 fb = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b));
  return fa.x * fb.x + fa.y * fb.y;
}
template <>
__device__ __forceinline__ float dot_16bytes<__nv_bfloat16>(uint4 a, uint4 b) {
  return dot_bf16x2(a.x, b.x) + dot_bf16x2(a.y, b.y) + dot_bf16x2(a.z, b.z) + dot_bf16x2(a.w, b.w);
}

// Merges two (max, sum of exp(x - max)) pairs; (-inf, 0) is the empty set.
__device__ __forceinline__ float2 merge_ms(float2 a, float2 b) {
  const float m = fmaxf(a.x, b.x);
  if (m == -INFINITY) return make_float2(m, 0.f);
  return make_float2(m, (a.x == -INFINITY ? 0.f : a.y * __expf(a.x - m)) + (b.x == -INFINITY ? 0.f : b.y * __expf(b.x - m)));
}

// A running (max, sum of exp(x - max)) of a stream of scores. The max grows rarely: one exp per score, the rescale
// only when it does (m = -inf at the start: s is 0 and exp(-inf) = 0).
struct SoftmaxPartial {
  float m = -INFINITY, s = 0.f;
  __device__ __forceinline__ void add(float v) {
    if (v > m) {
      s = s * __expf(m - v) + 1.f;
      m = v;
    } else {
      s += __expf(v - m);
    }
  }
  __device__ __forceinline__ void merge(float2 o) {
    const float2 r = merge_ms(make_float2(m, s), o);
    m = r.x;
    s = r.y;
  }
  __device__ __forceinline__ float2 get() const { return make_float2(m, s); }
};

// The sum over a block of any multiple of 32 threads up to 1024, returned to every thread. A second call needs a
// __syncthreads() before it: the warps' partial sums share one buffer.
__device__ __forceinline__ float block_total(float v) {
  __shared__ float part[32];
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) total += part[i];
  return total;
}

// Programmatic dependent launch (Hopper): a kernel launched with the attribute may start once every block of the
// kernel before it has run pdl_trigger; pdl_wait then blocks until that kernel has finished and its writes are
// visible. Without the attribute both are no-ops. The kernels that use them trigger at their start and wait before
// they touch what the previous one writes (or before they write what the previous one reads), so the wait chain
// stays transitive (sparse_decode.cu: a streaming head's whole attend overlaps the retrieval passes; moe_decode.cu: the
// down projection's first weight rows arrive while the gate/up pass ends).
// Programmatic dependent launch exists from sm_90 on; the launcher uses plain stream order on older GPUs, where
// these compile to nothing.
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The first thing a kernel of the decode step does when it is launched by programmatic launch and reads or writes
// nothing before it but constant weights: wait for the kernel before it, then let the next one launch. Triggering only
// after the wait keeps the chain's invariant for kernels that load before their own wait (the MoE down pass reads the
// router's expert ids, the hist pass the index rows the token store wrote, the attend's streaming blocks never wait):
// once a kernel has launched, every kernel before its predecessor has finished.
__device__ __forceinline__ void pdl_wait_then_trigger() {
  pdl_wait();
  pdl_trigger();
}

// Per-device facts the launchers ask on every launch, kept in a table per fact (a device index past it is asked
// every time).
constexpr int kCachedDevices = 64;

// Attribute kAttr of the current device, `unreadable` if it cannot be read. The table holds value + 1 (0: not read
// yet), so that an attribute whose value is 0 is kept too.
template <cudaDeviceAttr kAttr>
inline int current_device_attribute(int unreadable) {
  static std::atomic<int> value_of[kCachedDevices];
  int dev = 0, value = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return unreadable;
  const bool kept = dev >= 0 && dev < kCachedDevices;
  if (kept && (value = value_of[dev].load(std::memory_order_relaxed)) > 0) return value - 1;
  if (cudaDeviceGetAttribute(&value, kAttr, dev) != cudaSuccess) return unreadable;
  if (kept) value_of[dev].store(value + 1, std::memory_order_relaxed);
  return value;
}

// The compute capability's major number of the current device, 0 if it cannot be read: the launchers take
// programmatic launch from 9 on (the launch attribute needs Hopper or later).
inline int current_device_cc_major() { return current_device_attribute<cudaDevAttrComputeCapabilityMajor>(0); }
inline bool programmatic_launch_available() { return current_device_cc_major() >= 9; }

// Launches kern; pdl: with programmatic stream serialization (see pdl_trigger). A kernel launched so must wait
// (pdl_wait) before it reads anything the kernels before it write; the first kernel of a call waits before anything
// else (pdl_wait_then_trigger). cooperative: every block of the grid resident at once, or the launch is refused
// (cudaLaunchAttributeCooperative; it combines with programmatic launch, in CUDA graphs too: H100, driver 580).
template <typename... KArgs, typename... Args>
cudaError_t launch_with(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                        bool cooperative, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cooperative) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n++].val.cooperative = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kern, static_cast<KArgs>(args)...);
}
template <typename... KArgs, typename... Args>
cudaError_t launch_k(void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                     Args... args) {
  return launch_with(kern, grid, block, smem, stream, pdl, false, args...);
}

}  // namespace rtp::kernels::cuda_detail
