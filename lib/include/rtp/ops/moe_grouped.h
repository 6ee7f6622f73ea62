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
// e = expert[n, k]. Each expert's output is rounded to x's dtype (the GEMM's output), then weighted and a token's K
// products summed in float32 before one rounding (moe_combine below); Hugging Face's block rounds the weight, each
// product and each partial sum to the dtype.
torch::Tensor moe_grouped(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                          const torch::Tensor& gate_up, const torch::Tensor& down);

// Whether moe_grouped's GEMMs take one grouped launch for these shapes (rows of H and I elements a multiple of 16
// bytes, 16-byte aligned weights, float32 / bf16 / fp16); otherwise one GEMM pair per expert that has tokens.
bool moe_grouped_gemm_supported(const torch::Tensor& x, const torch::Tensor& gate_up, const torch::Tensor& down);

// The block's first step: the slots grouped by expert (kernels/moe_group.h, a stable sort of the ids). expert int64
// [N, K], each in [0, experts). row_token int64 [N K]: the token whose activations row r takes (rows in expert order,
// a token's slots in slot order within an expert); ends int32 [experts]: rows with an expert <= e (the grouped GEMM's
// offsets); slot_row int64 [N K]: the row of slot (n, k). On a GPU three kernels (a stable sort beyond 1024 experts); on the
// CPU the reference, which names an id out of range.
struct MoeSlotGroups {
  torch::Tensor row_token, ends, slot_row;
};
MoeSlotGroups moe_group_slots(const torch::Tensor& expert, int64_t experts);

// The last step of the block: rows [N K, H] hold the expert outputs in expert order, slot_row int64 [N K] the row of
// slot (n, k) (the sort's inverse permutation), weight [N K] the routing weights in (token, slot) order. Returns
// [N, H] in rows' dtype: sum over k of weight[n K + k] * rows[slot_row[n K + k]], in float32, one rounding. On a GPU
// one kernel (kernels/moe_combine.h: one read of the rows instead of three passes) where the rows are 16-byte vectors
// and no gradient must flow through it; eager ops elsewhere. moe_grouped's last step.
torch::Tensor moe_combine(const torch::Tensor& rows, const torch::Tensor& slot_row, const torch::Tensor& weight,
                          int64_t slots_per_token);

}  // namespace rtp::ops
