#pragma once
// The sparse-attention contract shared by the CPU references, the CUDA kernels, the torch ops and the model's
// reference sparse forward. Torch-free, plain pointers, POD parameter structs. Everything below is normative:
// the CPU references implement it with plain loops and the CUDA kernels implement the same functions.
//
// ---------------------------------------------------------------------------------------------------------
// Layout (batch 1; one-shot, q_offset = 0; chunked calls below). q [Hq, T, D], k/v [Hkv, T, D], o [Hq, T, D]; element (h, t, d) lives at
// h*head_stride + t*row_stride + d (the d stride is 1). GQA: G = Hq / Hkv, query head h reads KV head h / G.
// Scale = 1/sqrt(D) unless set. Causal. D is 64 or 128 on the GPU (any D on the CPU).
//
// Head kinds (per KV head, shared by the G query heads of its group):
//   DENSE      key j visible to query i iff j <= i
//   STREAMING  key j visible to query i iff j <= i and (j < sink or j > i - window)
//              (so `window` keys i-window+1..i, the query itself included, plus the first `sink` keys)
//   RETRIEVAL  key j visible to query i iff j <= i and block(j) is in the selected list of
//              (retrieval slot of the KV head, block(i)); block(x) = x / block_size.
// Retrieval slots: the RETRIEVAL KV heads numbered 0.. in ascending KV-head order (Hkv_ret of them).
// Block size: block_q = block_k = block_size, 64 (default) or 128. T need not be a multiple of it.
//
// Selected lists: counts int32 [Hkv_ret, n_blocks] and indices int32 [Hkv_ret, n_blocks, max_blocks],
// n_blocks = ceil(T / block_size); list (r, b) holds counts[r, b] key-block indices, ascending and unique,
// all <= b; entries past the count are unspecified. Every list holds block 0 (the sinks) and the
// `local_blocks` blocks max(0, b-local_blocks+1) .. b (default local_blocks = 1: the diagonal block).
//
// ---------------------------------------------------------------------------------------------------------
// Prefill block selection (select_blocks_*). Inputs index_q [Hkv_ret, G, T, 16] and index_k [Hkv_ret, T, 16].
// Token index score s(i, j) = index_q[h, i] . index_k[j] / sqrt(16).
// For retrieval slot r, query head h of its group, query block b, key block c <= b (keys j in c with j < T,
// n_c of them; the diagonal block c = b counts all its keys, not only the causal ones):
// Query sub-blocks: S = query_sub_blocks, a power of two in [1, block_size] (default 1). Query block b splits
// into S sub-blocks of B / S consecutive tokens, sub-block s holding positions b*B + s*B/S .. b*B + (s+1)*B/S - 1;
// only its tokens i < T count, and a sub-block with none (the tail of the last block) is left out.
//   qbar[h, b, s] = mean over the query tokens i < T of sub-block s of block b of index_q[h, i]  (pooled query)
//   u[h, b, s, j] = qbar[h, b, s] . index_k[j] / sqrt(16)                                   (one dot per key)
//   L[h, b, s, c] = max( max_{j in c} u[h,b,s,j] ,  mean_{j in c} u[h,b,s,j] + log(n_c) )
//                  (both terms are lower bounds of log sum_{j in c} exp(u): the first is tight for a block
//                   holding one needle, the second for a flat block; no exp per token is needed)
//   P_h[b, c]    = mean over the non-empty sub-blocks s of block b of (softmax over c in [0, b] of L[h, b, s, c])
//   P[b, c]      = mean over the G query heads of the group of P_h[b, c]
// Sub-block aggregate (sub_block_aggregate, default MEAN = the two lines above). MAX instead takes, per key block,
// the largest probability any (query head h, non-empty sub-block s) gives it, renormalised over c in [0, b]:
//   D[h, s, c]   = softmax over c in [0, b] of L[h, b, s, c]
//   P[b, c]      = max_{h, s} D[h, s, c]  /  sum_{c' in [0, b]} max_{h, s} D[h, s, c']
// Why MAX: a block that a few sub-blocks (or one query head) need is kept even when the mean over the others
// dilutes it below the top-p cut. Toy, top-p 0.9, 1024 tokens, S = 64: MAX 0.996 sparse accuracy / 0.903 recall
// / 0.264 attention fraction against MEAN 0.990 / 0.876 / 0.257; at S = 1 it changes little (0.81 / 0.82).
// Same dot products and exps as MEAN (the CUDA top-p kernel takes the max instead of the sum, then renormalises).
// Why sub-blocks: one mean query per block is a superposition when the block's queries look at different
// places (an induction head copying a span of random tokens); it matches none of them and top-p misses mass.
// Averaging the sub-blocks' distributions keeps each place's mass. S = 1 is one pooled query per block;
// S = block_size pools nothing (one distribution per query token). The diagonal block still counts all its
// keys for every sub-block (the same L as S = 1 when S = 1).
// Top-p: F = forced blocks (block 0 and the local blocks), m = top_p - sum_{c in F} P[b, c].
// If m > 0, sort the other blocks c <= b by P descending (ties: lower index first) and take the shortest
// prefix whose mass reaches m; cap the prefix at max_blocks - |F| blocks. The list is F plus that prefix,
// written in ascending order. max_blocks must be >= |F| (the launchers check it); max_blocks = n_blocks
// never cuts. The CUDA version finds the same set by bisection on a probability threshold (sort-free);
// it can differ from the CPU only on exact ties and where float summation order moves a block across
// the threshold.
// Cost: S * G * n_blocks * T / 2 dot products of 16 (tensor cores on the GPU) and S * G * n_blocks^2 / 2 exps:
// pooling by the block size divides the exps by block_size / S relative to token-level top-p. The logits pass
// grows linearly in S, which is why S = 1 stays the default for large models.
//
// ---------------------------------------------------------------------------------------------------------
// Chunked prefill (q_offset > 0). A long prompt is prefilled in chunks so that no call needs an N x N tensor or
// the whole prompt's activations; a chunk's results equal those of one call over the whole prompt.
//   Positions: seq_len = T is the number of keys, tokens 0..T-1 (the cached prefix and the chunk); the queries
//   are the last Tq = T - q_offset of them: query row i is the token at position q_offset + i. Every rule above
//   holds with i, j, b, c the absolute positions and blocks. q and o are [Hq, Tq, D].
//   Attention: key rows are absolute positions (row j = token j, k/v [Hkv, T, D]), except that STREAMING heads
//   may leave out tokens no query of the call can see (stream_key_skip = s > 0): rows 0..S-1 hold tokens
//   0..S-1, S = min(sink, T), and row r >= S holds token r + s, so k/v are [Hkv, T - s, D]. The tokens left out,
//   S..S+s-1, must be older than the window of the first query: S + s <= max(S, q_offset - window + 1). This
//   is what lets a ring of sink + window tokens serve a chunk longer than the window: the caller attends to
//   [sinks, ring tokens q_offset-window+1..q_offset-1, the chunk's own k/v] and writes the chunk to the ring
//   only afterwards (writing it first would overwrite keys its first queries still need). s > 0 requires
//   every KV head to be STREAMING.
//   Block lists: with RETRIEVAL heads q_offset must be a multiple of block_size; the lists then cover the
//   chunk's query blocks only: counts [Hkv_ret, nqb], indices [Hkv_ret, nqb, max_blocks], nqb = ceil(Tq / B),
//   list (r, m) belonging to query block q_offset / B + m and holding absolute key-block indices.
//   Selection (select_blocks_*, q_offset > 0): index_q [Hkv_ret, G, Tq, 16] holds the chunk's queries,
//   index_k [Hkv_ret, T, 16] every key so far; the lists of query blocks q_offset/B .. n_blocks-1 are computed
//   exactly as above over T tokens (block_probs [Hkv_ret, nqb, n_blocks]). They equal the lists of one call
//   over a longer prompt of P >= T tokens when the chunk ends at a block boundary or at the prompt's end
//   (T % B == 0 or T == P): otherwise the chunk's last query block would pool fewer queries and its diagonal
//   block fewer keys. q_offset must be a multiple of block_size for the same reason.
//
// ---------------------------------------------------------------------------------------------------------
// Decode (sparse_decode_*): one new query token per sequence at position t = kv_len - 1, KV length kv_len
// (the new token's k/v/index_k already written to the caches).
//   Full caches: the DENSE and RETRIEVAL KV heads, numbered 0.. in ascending KV-head order ("full slot"),
//                k_full/v_full [Hfull, cap_full, D], token j at row j.
//   Ring caches: the STREAMING KV heads, numbered 0.. in ascending KV-head order ("ring slot"),
//                k_ring/v_ring [Hstr, sink + window, D]. Slot s < sink holds token s; token j >= sink lives
//                in slot sink + (j - sink) % window. After token t is written the ring holds tokens
//                0..min(sink,kv_len)-1 and max(sink, t-window+1)..t: exactly the keys STREAMING makes
//                visible to query t.
//   Retrieval selection (token granularity, sort-free): index_q [Hkv_ret, G, 16], index_k [Hkv_ret, cap, 16].
//     p_h(j) = softmax over j in [0, t] of index_q[h] . index_k[j] / sqrt(16);  P(j) = mean_h p_h(j).
//     Forced tokens F: j < keep_first or j > t - keep_last (defaults 64 and 64).
//     bin(P) = min(NB-1, floor(-kDecodeBinsPerOctave * log2(P))) (P = 0 goes to bin NB-1), NB = kDecodeBins.
//     Z = sum_j P_j (1 up to rounding). b* = the smallest bin such that
//          sum_F P + sum_{j not in F, bin(P_j) <= b*} P_j >= top_p * Z   (-1 if sum_F P alone reaches it,
//          NB-1 if none), and b* = NB-1 whenever top_p >= 1. Selected = F plus every j with bin(P_j) <= b*.
//          This over-selects by at most one bin (a factor 2^(1/8) of probability) and needs no sort: one
//          histogram pass. Comparing with top_p * Z rather than top_p keeps the cut independent of how far the
//          computed masses sum from 1 (single-precision exp on the GPU summed to 1 + ~1e-6, so top_p = 1 cut
//          off the tail tokens whose mass was below that error); top_p >= 1 means every token, by definition.
//   Attention of query head h is softmax(q_h k_j^T * scale) v over the selected / visible keys.
//   GPU: split-K over keys (each thread block a chunk of keys for all G query heads of a KV head,
//   partial (m, l, acc) per chunk, then a combine kernel).
// ---------------------------------------------------------------------------------------------------------
#include <cstddef>
#include <cstdint>

namespace rtp::kernels {

enum class HeadKind : int32_t { DENSE = 0, STREAMING = 1, RETRIEVAL = 2 };
enum class DType : int32_t { F32 = 0, BF16 = 1 };
// Which CUDA prefill attention kernel runs: AUTO = WGMMA_WS on a compute-capability 9.0 device when the build
// has sm_90a code, else the mma.sync kernel; a Hopper kernel asked for where it cannot run is an error.
// WGMMA: two warpgroups of Hopper warpgroup MMA in lock step; WGMMA_WS: a TMA producer warpgroup and two
// consumers taking turns on the tensor cores (FlashAttention-3's structure).
enum class PrefillKernel : int32_t { AUTO = 0, MMA_SYNC = 1, WGMMA = 2, WGMMA_WS = 3 };

constexpr int kIndexDim = 16;
constexpr int kMaxKvHeads = 64;
constexpr int kDecodeBins = 512;
constexpr int kDecodeBinsPerOctave = 8;

// The block sizes (query and key blocks, tokens) the selection and prefill kernels tile, CPU reference and CUDA alike.
constexpr bool block_size_supported(int64_t b) { return b == 64 || b == 128; }

// The visibility rule above for a non-retrieval head (DENSE / STREAMING); RETRIEVAL adds the block lists.
inline bool visible_by_kind(HeadKind kind, int64_t i, int64_t j, int64_t sink, int64_t window) {
  if (j > i) return false;
  if (kind == HeadKind::STREAMING) return j < sink || j > i - window;
  return true;
}

// Whether key block c is forced into the list of query block b.
inline bool is_forced_block(int64_t b, int64_t c, int64_t local_blocks) { return c == 0 || (c <= b && c > b - local_blocks); }

// How the per-(query head, sub-block) block distributions of a query block are combined (definition above).
enum class BlockAggregate : int32_t { MEAN = 0, MAX = 1 };

struct BlockSelectParams {
  // index_q [Hkv_ret, G, T, 16], index_k [Hkv_ret, T, 16], contiguous. CPU: F32 only. CUDA: F32 or BF16.
  const void* index_q = nullptr;
  const void* index_k = nullptr;
  DType index_dtype = DType::F32;
  int32_t* counts = nullptr;   // [Hkv_ret, n_blocks]
  int32_t* indices = nullptr;  // [Hkv_ret, n_blocks, max_blocks]
  float* block_probs = nullptr;  // optional (CPU only): P [Hkv_ret, n_blocks, n_blocks] (0 above diagonal)
  int num_ret_heads = 0;       // Hkv_ret
  int group_size = 0;          // G
  int64_t seq_len = 0;         // T
  int block_size = 64;         // 64 or 128
  int local_blocks = 1;
  int max_blocks = 0;          // list capacity; n_blocks never cuts
  float top_p = 0.9f;
  int64_t q_offset = 0;        // chunked prefill: index_q holds tokens q_offset..seq_len-1 (a multiple of block_size)
  int query_sub_blocks = 1;    // S: pooled queries per query block, a power of two in [1, block_size]
  BlockAggregate sub_block_aggregate = BlockAggregate::MEAN;  // how sub-block/head distributions combine
  // CUDA: optional device scratch of at least select_blocks_workspace_bytes(params) bytes; null: the call
  // allocates its own (cudaMallocAsync, freed after the launches).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

struct SparseAttentionParams {
  // CPU: F32 in and out. CUDA: BF16 in and out (fp32 accumulation).
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  DType dtype = DType::F32;
  int64_t q_head_stride = 0, q_row_stride = 0;  // 0: contiguous defaults (rows*D, D): Tq rows for q/o,
                                                // T - stream_key_skip for k/v
  int64_t k_head_stride = 0, k_row_stride = 0;
  int64_t v_head_stride = 0, v_row_stride = 0;
  int64_t o_head_stride = 0, o_row_stride = 0;
  int num_q_heads = 0, num_kv_heads = 0;
  int64_t seq_len = 0;
  int head_dim = 128;
  float scale = 0.f;  // 0: 1/sqrt(D)
  // HOST pointer (for the CUDA launcher too): kind per KV head [Hkv].
  const HeadKind* head_kind = nullptr;
  // HOST pointer, optional: the query group of each KV head [Hkv], distinct, in [0, kMaxKvHeads). KV head h of the
  // call then reads query heads q_group[h] * G .. q_group[h] * G + G - 1 of q and writes the same heads of o
  // (G = num_q_heads / num_kv_heads; q and o may hold more heads than num_q_heads: a layer's heads of one kind
  // attended in place, without gathering their queries and scattering their outputs). Null: group h.
  const int32_t* q_group = nullptr;
  int64_t sink = 4, window = 8192;
  int block_size = 64;
  // Retrieval lists (device pointers for CUDA), layout above. May be null when no head is RETRIEVAL.
  const int32_t* block_counts = nullptr;
  const int32_t* block_indices = nullptr;
  int max_blocks = 0;
  // Chunked prefill (section above): queries are tokens q_offset..seq_len-1; STREAMING key rows skip
  // stream_key_skip tokens after the sinks.
  int64_t q_offset = 0;
  int64_t stream_key_skip = 0;
  PrefillKernel prefill_kernel = PrefillKernel::AUTO;  // CUDA only
};

// CUDA decode launch choices that are not part of the semantics (the output is the same up to rounding): for
// device sweeps and as fallbacks while a kernel version is new. Defaults are the tuned ones.
struct DecodeTuning {
  bool v2_attend = false;               // the CUDA-core attend of the version before the mma one
  bool programmatic_launch = true;      // programmatic dependent launch between the call's kernels
  int streaming_keys_per_block = 0;     // 0: 128 (split evenly); else this target, in [16, 8192]
  // DENSE heads: 0: 64 keys per block per 2K keys of the cache, at most 1024 (decode_splits.h); else this, in [16, 8192]
  int dense_keys_per_block = 0;
  int retrieval_candidates_per_block = 0;  // 0: by length (decode_splits.h, retrieval_candidates); else this, in [128, 2048]
  int index_rows_per_thread = 0;  // CUDA-core stats/hist passes: 0 the default (1); 1 or 2 index rows per thread per step
  int index_tokens_per_block = 0;  // stats/hist passes: 0: 256 up to 48K, 512 up to 128K, then <= 512 blocks; else this, in [256, 65536]
  // hist pass alone: 0: as the stats pass (index_tokens_per_block); else this, in [256, 65536].
  int hist_tokens_per_block = 0;
  // Every retrieval attend block finds b* from the histogram itself instead of the last hist block (no ticket,
  // fence and serial cut at the end of the hist launch). Equal on an H200 while the hist pass was on the CUDA
  // cores, ~0.8 us faster per 128K layer since it is on the tensor cores (docs/status.md).
  bool bstar_in_attend = true;
  // Percent of each SM's unified L1 / shared memory the decode kernels ask to be shared memory
  // (cudaFuncAttributePreferredSharedMemoryCarveout; -1: the driver's choice). An SM changes the split only when it
  // is idle, so with the driver's choice (small shared memory for the stats kernel) the hist and attend blocks,
  // which need more, could not start on an SM until its stats blocks had drained (docs/status.md).
  int shared_carveout = 100;
  // K/V tile stages of the mma attend: 0 or 2 (the default; three blocks per SM) or 3 (two tiles in flight during each
  // tile's math, two blocks per SM).
  int attend_tile_stages = 0;
  // bf16 index: the stats and hist passes compute the index scores with mma.sync (16 tokens x 8 heads per
  // instruction) instead of 16 FMAs per (token, head); false: the CUDA-core kernels (the only ones for fp32 index).
  bool index_tensor_cores = true;
  // Profiling (no Nsight Systems on the GPU machine): device array of 2 * kDecodePhases uint64; per phase the
  // earliest block start (atomicMin) and the latest block end (atomicMax) in %globaltimer nanoseconds. The caller
  // sets the starts to UINT64_MAX and the ends to 0 before the call. Null (the default): no probe.
  unsigned long long* timeline = nullptr;
};
// Phases of the timeline probe, in this order.
// From kPhaseStatsRows on, points inside a phase (start: the first block to pass, end: the last): the stats rows
// read, the hist blocks' merged statistics, their bins and histogram atomics issued, then the retrieval attend's steps.
enum DecodePhase : int {
  kPhaseStats = 0,
  kPhaseHist,
  kPhaseAttendOther,
  kPhaseAttendRetrieval,
  kPhaseCombine,
  kPhaseStatsRows,
  kPhaseHistMerged,
  kPhaseHistBinned,
  kPhaseAttendReleased,   // retrieval attend blocks past their wait for the hist launch
  kPhaseAttendCompacted,  // ... with their kept list
  kPhaseAttendTilesDone,  // ... with their tiles attended (before the partial's merge and store)
  kDecodePhases
};

struct SparseDecodeParams {
  // CPU: F32. CUDA: BF16 for q, caches and o; index_q/index_k F32 or BF16 (index_dtype).
  const void* q = nullptr;       // [Hq, D]
  void* o = nullptr;             // [Hq, D]
  DType dtype = DType::F32;
  const void* k_full = nullptr;  // [Hfull, cap_full, D]
  const void* v_full = nullptr;
  int64_t cap_full = 0;
  const void* k_ring = nullptr;  // [Hstr, sink + window, D]
  const void* v_ring = nullptr;
  const void* index_q = nullptr;  // [Hkv_ret, G, 16]
  const void* index_k = nullptr;  // [Hkv_ret, cap_full, 16]
  DType index_dtype = DType::F32;
  int num_q_heads = 0, num_kv_heads = 0, head_dim = 128;
  int64_t kv_len = 0;  // t + 1; with `position`, the longest kv_len of any call the plan serves (<= cap_full)
  // CUDA, optional: device pointer to t (int64). The kernels read the length there, so that one captured call (a CUDA
  // graph) serves every step; grids and workspace are sized for kv_len (the blocks past a shorter length's own split
  // return at once). The splits depend only on the length read, so the result equals that of a call with the host
  // kv_len = *position + 1, bit for bit.
  const int64_t* position = nullptr;
  float scale = 0.f;
  const HeadKind* head_kind = nullptr;  // HOST pointer [Hkv]
  int64_t sink = 4, window = 8192;
  float top_p = 0.9f;
  int64_t keep_first = 64, keep_last = 64;
  int32_t* selected_count = nullptr;  // optional [Hkv_ret]: how many tokens each retrieval head attended
  // CUDA: optional device scratch of at least sparse_decode_workspace_bytes(params) bytes; null: the call
  // allocates and frees its own (stream-ordered, slower per token).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  DecodeTuning tuning;  // CUDA only
};

}  // namespace rtp::kernels
