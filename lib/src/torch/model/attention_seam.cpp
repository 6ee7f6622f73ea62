#include "rtp/model/attention_seam.h"

#include <torch/torch.h>

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

#include "rtp/model/attention_parts.h"

namespace rtp::model {

namespace {
// FlashAttention-2 through libtorch takes queries over a grouped, strided cache as it is (one decode query, or a
// prefill chunk).
bool flash_applies(const LayerAttentionInputs& in) {
  const auto dt = in.q.scalar_type();
  const int64_t D = in.q.size(3);
  return in.q.is_cuda() && (dt == torch::kBFloat16 || dt == torch::kFloat16) && in.k.scalar_type() == dt &&
         D % 8 == 0 && D <= 256 && in.k.stride(3) == 1 && in.v.stride(3) == 1 && in.q.size(1) % in.k.size(1) == 0;
}

// cuDNN's fused attention for a chunk's two parts: measured on Hopper only (an H100; elsewhere FlashAttention stays),
// head_dim up to 128 (Qwen3's; cuDNN's larger head sizes were not measured).
bool cudnn_parts_apply(const LayerAttentionInputs& in) {
#ifdef RTPURBO_WITH_CUDA
  return flash_applies(in) && in.q.size(3) <= 128 && at::globalContext().hasCuDNN() &&
         at::globalContext().userEnabledCuDNNSDP() &&
         at::cuda::getDeviceProperties(in.q.get_device())->major >= 9;
#else
  (void)in;
  return false;
#endif
}

// A chunk takes the two parts from this many queries: a few queries (a short continuation) over ever new key lengths
// would pay cuDNN's plans (some 37 ms per new shape) for microseconds.
constexpr int64_t kCudnnPartsMinQueries = 512;

AttentionPart cudnn_part(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal, double scale) {
  // cuDNN reads the KV heads as they are (GQA) and the cache's strided views; the log-sum-exp is what the merge needs.
  auto r = at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt, /*compute_log_sumexp=*/true,
                                                   /*dropout_p=*/0.0, causal, /*return_debug_mask=*/false, scale);
  return {std::get<0>(r), std::get<1>(r)};
}

// One decode query per head on the CPU: the scores of each query group against its KV head's keys by two batched
// matrix products over the cache as it lies. SDPA's CPU kernel took 4.7 ms for 1,024 keys of a narrowed (strided)
// cache against 0.01 ms for the same keys contiguous (torch 2.11, 2-core VM), and making them contiguous copies the
// cache every token. Float32 arithmetic whatever the storage, like the math path it replaces.
torch::Tensor grouped_decode_attention(const LayerAttentionInputs& in) {
  const int64_t B = in.q.size(0), Hq = in.q.size(1), Hkv = in.k.size(1), D = in.q.size(3);
  const auto f32 = [](const torch::Tensor& t) { return t.scalar_type() == torch::kFloat32 ? t : t.to(torch::kFloat32); };
  const auto q = f32(in.q).reshape({B, Hkv, Hq / Hkv, D});
  const double scale = in.scale;
  const auto p = torch::softmax(torch::matmul(q, f32(in.k).transpose(-1, -2)) * scale, -1);
  return torch::matmul(p, f32(in.v)).reshape({B, Hq, 1, D}).to(in.q.scalar_type());
}
}  // namespace

torch::Tensor DenseAttention::attend(const LayerAttentionInputs& in) {
  const int64_t tq = in.q.size(2), tk = in.k.size(2);
  if (tq == 1) {
    // One query at the last position sees every key: no mask (a mask keeps SDPA off its fused kernels). Not through
    // SDPA's dispatcher on a GPU: it picks cuDNN there, which builds an execution plan for every new key length, that
    // is for every decoded token (~1.5 ms of host time per layer and token on an H200 until the lengths repeat).
    if (flash_applies(in))
      return std::get<0>(at::_scaled_dot_product_flash_attention(in.q, in.k, in.v, 0.0, false, false, in.scale));
    if (in.q.is_cpu() && in.q.size(1) % in.k.size(1) == 0) return grouped_decode_attention(in);
    return at::scaled_dot_product_attention(in.q, in.k, in.v, /*attn_mask=*/{}, 0.0, false, in.scale, true);
  }
  if (tq != tk) {
    // Queries are the last tq of tk positions (chunked prefill / decode): bottom-right aligned causal mask. FlashAttention
    // aligns its causal mask so where the lengths differ (what torch's causal_lower_right bias dispatches to), over the
    // grouped cache as it lies; an explicit mask keeps SDPA off its fused kernels (and enable_gqa off the rest): the
    // scores of a 4096-token chunk over 32K keys in float32, per layer.
    if (chunk_ == ChunkAttention::SplitCudnn && tq >= kCudnnPartsMinQueries && tq < tk && cudnn_parts_apply(in))
      return chunk_attention_in_two(in, cudnn_part);
    if (flash_applies(in) && tq < tk)
      return std::get<0>(at::_scaled_dot_product_flash_attention(in.q, in.k, in.v, 0.0, /*is_causal=*/true, false, in.scale));
    auto i = torch::arange(tq, torch::TensorOptions(torch::kInt64).device(in.q.device())).unsqueeze(1) + (tk - tq);
    auto j = torch::arange(tk, torch::TensorOptions(torch::kInt64).device(in.q.device())).unsqueeze(0);
    return at::scaled_dot_product_attention(in.q, in.k, in.v, j <= i, 0.0, false, in.scale, true);
  }
  const int64_t group = in.q.size(1) / in.k.size(1);
  if (in.q.is_cuda() && group > 1) {
    // The fused GPU kernels that never form the [T, T] scores (flash, memory-efficient, cuDNN) do not all accept
    // enable_gqa; without them SDPA falls back to the math path, which at 32K tokens needs 32 x 32K x 32K floats.
    // Expanding k/v costs [Hq, T, D] once per layer.
    auto k = in.k.repeat_interleave(group, 1), v = in.v.repeat_interleave(group, 1);
    return at::scaled_dot_product_attention(in.q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                            in.scale);
  }
  return at::scaled_dot_product_attention(in.q, in.k, in.v, /*attn_mask=*/{}, /*dropout_p=*/0.0,
                                          /*is_causal=*/true, in.scale, /*enable_gqa=*/true);
}

torch::Tensor causal_attention_probs(const torch::Tensor& q, const torch::Tensor& k, double scale) {
  const int64_t group = q.size(1) / k.size(1);
  auto kk = group == 1 ? k : k.repeat_interleave(group, 1);
  auto scores = torch::matmul(q.to(torch::kFloat32), kk.to(torch::kFloat32).transpose(-1, -2)) * scale;
  const int64_t tq = q.size(2), tk = k.size(2);
  // Queries are the last tq positions of the tk keys (tq == tk for a full prefill).
  auto mask = torch::ones({tq, tk}, torch::TensorOptions(torch::kBool).device(q.device())).triu(tk - tq + 1);
  scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  return torch::softmax(scores, -1);
}

}  // namespace rtp::model
