#pragma once
// The MoE block for many tokens (a prompt, a prompt chunk, the training forward): the (token, slot) pairs sorted by
// expert so that each expert's weights are read once for all its tokens, and every expert's GEMM in one grouped GEMM
// launch (at::_grouped_mm: CUTLASS on Hopper for bf16, a loop of GEMMs elsewhere) with the expert boundaries left on
// the device. Its predecessor, a loop over the experts on the host (a gather, two GEMMs, SwiGLU, a scale and an
// indexed add per expert: 768 launches and a device-to-host copy per layer of Qwen3-30B-A3B), was bound by the host.
// A decode step's few tokens go through moe_decode.h instead.
#include <torch/types.h>

namespace rtp::ops {

// x [N, H]; expert int64 [N, K] (each in [0, E)); weight [N, K]; gate_up [E, 2I, H] (gate rows, then up rows);
// down [E, H, I]. Returns [N, H] in x's dtype: sum over k of weight[n, k] * down_e (silu(gate_e x_n) * up_e x_n),
// e = expert[n, k]. The expert outputs are rounded to x's dtype (they are GEMM outputs); the weighting and the sum
// over a token's K slots run in float32 with one rounding at the end (on a GPU in one kernel, moe_combine.h), where
// Hugging Face's block rounds after each weighting and each add.
torch::Tensor moe_grouped(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                          const torch::Tensor& gate_up, const torch::Tensor& down);

// Whether moe_grouped's GEMMs take one grouped launch for these shapes (rows of H and I elements a multiple of 16
// bytes, 16-byte aligned weights, float32 / bf16 / fp16); otherwise one GEMM pair per expert that has tokens.
bool moe_grouped_gemm_supported(const torch::Tensor& x, const torch::Tensor& gate_up, const torch::Tensor& down);

}  // namespace rtp::ops
