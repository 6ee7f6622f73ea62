#pragma once
// How the CUDA sparse decode (sparse_decode.cu) splits one call's work over thread blocks: a function of the KV
// length and the tuning alone. A call with a host length evaluates it on the host; a call that reads the length
// from device memory (SparseDecodeParams::position, so that a CUDA graph serves every step) evaluates it in each
// kernel, on a grid sized for the longest length the call may see (split_bounds). Both give the same splits for the
// same length, hence the same sums in the same order and the same result bit for bit. Plain C++17, free of CUDA
// headers: a CPU-only build tests the bounds (tests/kernels/decode_splits_test.cpp).
#include <cstdint>

#include "rtp/kernels/sparse_attention_params.h"

#ifdef __CUDACC__
#define RTP_SPLITS_HD __host__ __device__ __forceinline__
#else
#define RTP_SPLITS_HD inline
#endif

namespace rtp::kernels::cuda_detail {

// The tuning knobs the splits depend on (DecodeTuning's, 0 = the default rule).
struct SplitTuning {
  int streaming_keys_per_block = 0;
  int retrieval_candidates_per_block = 0;
  int dense_keys_per_block = 0;
  int index_tokens_per_block = 0;
  int hist_tokens_per_block = 0;
  bool v2_attend = false;
};

constexpr int kRetrievalChunkMax = 2048;  // candidates per retrieval attend block (its compacted list's size)

// Every decode kernel evaluates the splits at its start, on the path to its dependents' launch and its first load: a
// 64-bit division is a ~70-instruction subroutine on the GPU, a 32-bit one a few instructions, and a KV length and
// a chunk always fit 31 bits in practice. Same quotient either way, so host and device agree.
RTP_SPLITS_HD int64_t splits_ceil_div(int64_t a, int64_t b) {
#ifdef __CUDA_ARCH__
  constexpr int64_t kFits = int64_t(1) << 31;
  if (a >= 0 && a < kFits && b > 0 && b < kFits) return int64_t((uint32_t(a) + uint32_t(b) - 1u) / uint32_t(b));
#endif
  return (a + b - 1) / b;
}

// The index passes (stats, hist) of the retrieval heads: tokens per block and blocks per retrieval head.
struct IndexSplit {
  int stat_chunk, nstats, hist_chunk, nhist;
};
// Up to 48K keys 256 tokens per index block (at most 192 blocks), beyond that at least 512 tokens and at most ~512
// blocks (every hist block merges all stats chunks of its head): 256 blocks at 128K, 512 at 1M. Measured on H100s
// and an H200 (docs/decode.md, "Split arithmetic on the GPU and index blocks"): 256 tokens were 0.4-2 us faster per
// call at 4K-49K keys, where a retrieval head keeps 15-75% of its tokens, tied 512 at 32K and 64K with 3% kept, and
// lost 3-4 us at 128K and 13-23 at 256K (more stats chunks for every hist block to merge).
constexpr int64_t kIndexUpTo256 = 49152;
RTP_SPLITS_HD IndexSplit index_split(int64_t L, const SplitTuning& t) {
  IndexSplit s;
  const int64_t def = splits_ceil_div(splits_ceil_div(L, 512), 256) * 256;
  const int64_t chunk = L <= kIndexUpTo256 ? 256 : def > 512 ? def : 512;
  s.stat_chunk = t.index_tokens_per_block > 0 ? t.index_tokens_per_block : int(chunk);
  s.nstats = int(splits_ceil_div(L, s.stat_chunk));
  s.hist_chunk = t.hist_tokens_per_block > 0 ? t.hist_tokens_per_block : s.stat_chunk;
  s.nhist = int(splits_ceil_div(L, s.hist_chunk));
  return s;
}

// The attend pass: keys a KV head sees, keys per block and blocks.
struct HeadSplit {
  int64_t nkeys;
  int chunk, nsplit;
};
RTP_SPLITS_HD int64_t streaming_keys(int64_t L, int64_t sink, int64_t window) {
  const int64_t s = sink < L ? sink : L;
  const int64_t rest = L - sink > 0 ? L - sink : 0;
  return s + (window < rest ? window : rest);
}
// Candidates per retrieval attend block. Long caches: a retrieval head keeps a few percent of its tokens, so 1024
// candidates give ~256 blocks at 256K, and past 256K 2048 (the shared list's size) keeps the partials the combine
// reads in check. Shorter caches: the head keeps a larger share of its tokens, and 1024 candidates left a few blocks
// of many key tiles on the call's critical path while the dense and streaming heads' blocks held one or two. Measured
// on an H100 (CUDA-graph step, us per layer, docs/decode.md "Retrieval attend blocks"), at 3%, 11%, 22% and 50% kept:
// up to 48K keys 256 candidates tie or beat 512 and 1024 (4.5-6 us faster than 1024 at 50%); from 48K to 128K 512 is
// the best or within the ~1 us run-to-run spread of it (1024 is 0.5-4 us slower from 11% kept up, 256 up to 2 us
// slower at 3% at 64K); at 128K 1024 and 512 tie at 3% and 11%; at 256K 1024 is faster at 50%; at 1M 2048 beats 1024
// at 3% (49.2 against 55.5). (Scalars, not an array: device code reads them too.)
constexpr int64_t kRetrievalUpTo256 = 49152, kRetrievalUpTo512 = 131072, kRetrievalUpTo1024 = 262144;
RTP_SPLITS_HD int retrieval_candidates(int64_t L) {
  return L <= kRetrievalUpTo256    ? 256
         : L <= kRetrievalUpTo512  ? 512
         : L <= kRetrievalUpTo1024 ? 1024
                                   : kRetrievalChunkMax;
}

RTP_SPLITS_HD HeadSplit head_split(HeadKind kind, int64_t L, int64_t sink, int64_t window, const SplitTuning& t) {
  HeadSplit h;
  int64_t chunk;
  if (kind == HeadKind::STREAMING) {
    h.nkeys = streaming_keys(L, sink, window);
    // ~128 keys (two tiles) per block, split evenly: 8196 keys are 65 chunks of 127, not 64 of 128 and one of 4.
    chunk = 128;
    if (!t.v2_attend) {
      const int64_t target = t.streaming_keys_per_block > 0 ? t.streaming_keys_per_block : 128;
      const int64_t nb = h.nkeys > target ? splits_ceil_div(h.nkeys, target) : 1;
      chunk = splits_ceil_div(h.nkeys, nb);
    }
  } else if (kind == HeadKind::RETRIEVAL) {
    h.nkeys = L;
    chunk = t.v2_attend ? kRetrievalChunkMax : retrieval_candidates(L);
    if (!t.v2_attend && t.retrieval_candidates_per_block > 0) chunk = t.retrieval_candidates_per_block;
  } else {
    h.nkeys = L;
    // Dense heads: ~32 blocks per head, 64 * ceil(L / 2048) keys per block up to 1024 (128 at 4K, 256 at 8K, 512 at
    // 16K, 1024 from 30K on). Measured on an H100 (docs/decode.md, "Dense decode splits"): at 4K-40K keys the best of
    // 64-1024 keys per block was this one or within 1.2 us of it, for 8 KV heads (Qwen3-0.6B) and for 4
    // (Qwen3-30B-A3B) alike; the rule before (64 keys per block at 4K, 256 from 12K on) was 0.7-2.7 us slower from 4K
    // to 32K, and at 40K 1.3 us slower (30B-A3B) or 0.6 us faster (0.6B).
    if (t.dense_keys_per_block > 0) {
      chunk = t.dense_keys_per_block;
    } else {
      const int64_t c = 64 * splits_ceil_div(L, 2048);
      chunk = c < 64 ? 64 : (c > 1024 ? 1024 : c);
    }
  }
  h.chunk = int(chunk < 1 ? 1 : chunk);
  const int64_t n = splits_ceil_div(h.nkeys, h.chunk);
  h.nsplit = int(n < 1 ? 1 : n);
  return h;
}

// The most blocks any length 1..Lmax gives, per pass: a grid of this size serves every such length (the blocks
// past a length's own count return at once). The rules above are monotone in L except where a chunk size steps
// up, so the maxima sit at Lmax or just below a step.
RTP_SPLITS_HD int max_head_splits(HeadKind kind, int64_t Lmax, int64_t sink, int64_t window, const SplitTuning& t) {
  int best = head_split(kind, Lmax, sink, window, t).nsplit;
  const auto at = [&](int64_t L) {
    if (L >= 1 && L < Lmax) {
      const int n = head_split(kind, L, sink, window, t).nsplit;
      best = n > best ? n : best;
    }
  };
  if (kind == HeadKind::STREAMING && !t.v2_attend) {
    // Evenly split keys can take fewer blocks than the target asks for; that count grows with L.
    const int64_t n = streaming_keys(Lmax, sink, window);
    const int64_t target = t.streaming_keys_per_block > 0 ? t.streaming_keys_per_block : 128;
    const int nb = int(n > target ? splits_ceil_div(n, target) : 1);
    best = nb > best ? nb : best;
  }
  if (kind == HeadKind::RETRIEVAL) {  // just below where the candidates per block step up
    at(kRetrievalUpTo256), at(kRetrievalUpTo512), at(kRetrievalUpTo1024);
  }
  if (kind == HeadKind::DENSE)  // 32 blocks at each multiple of 2048 below the chunk's cap
    for (int64_t L = 2048; L <= 16 * 2048; L += 2048) at(L);
  return best;
}
RTP_SPLITS_HD IndexSplit max_index_split(int64_t Lmax, const SplitTuning& t) {
  IndexSplit s = index_split(Lmax, t);
  // Default chunking: ceil(L / 256) blocks up to 48K (192 at most), beyond that at most ceil(L / 512) and at most 512
  // (the chunk grows with L past 256K).
  if (t.index_tokens_per_block <= 0) {
    const int64_t short_max = splits_ceil_div(Lmax < kIndexUpTo256 ? Lmax : kIndexUpTo256, 256);
    const int64_t by_512 = splits_ceil_div(Lmax, 512);
    const int64_t long_max = Lmax <= kIndexUpTo256 ? 0 : by_512 < 512 ? by_512 : 512;
    const int64_t n = short_max > long_max ? short_max : long_max;
    s.nstats = int(n > s.nstats ? n : s.nstats);
    if (t.hist_tokens_per_block <= 0) s.nhist = s.nstats;
  }
  return s;
}

}  // namespace rtp::kernels::cuda_detail
