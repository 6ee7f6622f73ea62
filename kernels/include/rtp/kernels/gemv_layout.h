#pragma once
// How the GEMV (gemv.h) lays its warps over the weight rows; a header of its own so that torch-facing code can name
// it without the CUDA runtime headers.
#include <cstdint>

namespace rtp::kernels {

enum class GemvLayout : uint8_t {
  // WholeRows where m > 4 k and there is no epilogue (the dense MLP's fused gate/up: m/k 6 on Qwen3), SplitRows
  // elsewhere.
  Auto,
  // Four warps per row, each a quarter of it: long reductions over few rows (o, down, router, q/k/v), where one warp per
  // row would leave too few warps in flight.
  SplitRows,
  // One warp per two whole rows: each x vector is loaded once for both rows and the sums need no shared memory, for
  // short, wide reductions whose many rows give warps enough. No epilogue.
  WholeRows,
};

}  // namespace rtp::kernels
