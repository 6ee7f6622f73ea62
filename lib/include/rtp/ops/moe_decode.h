#pragma once
// Torch-facing MoE block for a few tokens (rtp/kernels/moe_decode.h): the selected experts read by id on the
// device, without the host learning how many tokens each expert got, so that a decode step can be a CUDA graph.
#include <torch/types.h>

#include <utility>

#include "rtp/kernels/moe_decode.h"  // MoeDecodeLaunchShape

namespace rtp::ops {

// The most tokens for which the model takes this path on a GPU; above it the grouped per-expert path (each expert's
// weights read once for all its tokens) reads less.
constexpr int64_t kMoeDecodeMaxTokens = 8;

// Whether moe_decode runs for tensors of this device and dtype (a CUDA build with bf16 or float32 on a GPU; float32
// on the CPU).
bool moe_decode_supported(torch::Device device, torch::ScalarType dtype);

// x [N, H]; expert int64 [N, K]; weight [N, K] (converted to x's dtype); gate_up [E, 2I, H]; down [E, H, I].
// Returns [N, H] in x's dtype. CPU: the float32 reference (double arithmetic). Where a gradient must flow through
// any input (the kernels have no backward), moe_grouped's differentiable ops instead. `shape`: how the CUDA kernels
// are cut into warps (the same result for every shape). `counts`: with shape.one_launch on a GPU, three int32 counts
// on x's device, 0 between launches (launches that share them must not overlap); undefined: made (zeroed) per call.
torch::Tensor moe_decode(const torch::Tensor& x, const torch::Tensor& expert, const torch::Tensor& weight,
                         const torch::Tensor& gate_up, const torch::Tensor& down,
                         const kernels::MoeDecodeLaunchShape& shape = {}, const torch::Tensor& counts = {});

// Whether moe_decode_add_rms_norm runs: moe_decode on a GPU, residual of x's shape, dtype and device and norm_weight
// [H] (both contiguous), done int32 counts on that device, no gradient wanted through any operand (the kernels have
// no backward).
bool moe_decode_add_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight,
                                       const torch::Tensor& gate_up, const torch::Tensor& down,
                                       const torch::Tensor& residual, const torch::Tensor& norm_weight,
                                       const torch::Tensor& done);

// moe_decode with the residual add and RMSNorm after it in the down pass's launch (its last block, moe_decode.h):
// returns (sum, normed), sum = residual + the block's output, normed = RMSNorm(sum) * norm_weight, each [N, H] in
// x's dtype, as add_rms_norm(residual, moe_decode(...), norm_weight, eps) gives them. `done`: the count of finished
// blocks, 0 between launches (launches that share it must not overlap); shape.one_launch needs three counts there
// (with one, the two launches run, with the same result).
std::pair<torch::Tensor, torch::Tensor> moe_decode_add_rms_norm(const torch::Tensor& x, const torch::Tensor& expert,
                                                                const torch::Tensor& weight,
                                                                const torch::Tensor& gate_up, const torch::Tensor& down,
                                                                const torch::Tensor& residual,
                                                                const torch::Tensor& norm_weight, double eps,
                                                                const torch::Tensor& done,
                                                                const kernels::MoeDecodeLaunchShape& shape = {});

}  // namespace rtp::ops
