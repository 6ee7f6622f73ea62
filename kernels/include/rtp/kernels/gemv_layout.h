#pragma once
// How the GEMV (gemv.h) lays its warps over the weight rows; a header of its own so that torch-facing code can name
// it without the CUDA runtime headers.
#include <cstdint>

namespace rtp::kernels {

// Auto's threshold: from 4096 rows (2048 warps, some 16 per SM) the whole-rows layout has warps enough in flight; on an
// H200 it took Qwen3-0.6B's q/k/v (4096 x 1024) from 6.4 to 3.2 us and its gate/up (6144 x 1024) from 9.1 to 4.1 us
// (cuBLAS 5.8), Qwen3-8B's q/k/v from 18.1 to 12.6 us and gate/up from 68.7 to 48.3 (cuBLAS 49.1); on an H100 its o
// projection (4096 x 4096) from 14.2 to 13.0 us, while its down projection (4096 x 12288) went from 33.7 to 37.5:
// reductions longer than the output stay split (docs/decode.md).
inline constexpr int64_t kGemvWholeRowsMinM = 4096;

enum class GemvLayout : uint8_t {
  // WholeRows where m >= kGemvWholeRowsMinM, k <= m and there is no add + RMSNorm epilogue; SplitRows elsewhere (o,
  // down and router projections of Qwen3-0.6B and -30B-A3B, the down projection of Qwen3-8B; the add + RMSNorm
  // epilogue's last-block count is the split layout's).
  Auto,
  // Four warps per row, each a quarter of it: long reductions over few rows (o, down, router, q/k/v), where one warp per
  // row would leave too few warps in flight.
  SplitRows,
  // One warp per two whole rows: each x vector is loaded once for both rows and the sums need no shared memory, for
  // short, wide reductions whose many rows give warps enough. The head norm and routing epilogues, not the add + norm.
  WholeRows,
};

}  // namespace rtp::kernels
