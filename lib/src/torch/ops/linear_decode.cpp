#include "rtp/ops/linear_decode.h"

#include <torch/torch.h>

#include <algorithm>

#include "backward_needed.h"
#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/gemv.h"
#include "rtp/kernels/moe_router.h"
#include "device_launch.h"
#include "launch_counter.h"
#include "row_layout.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

bool gemv_supported(const torch::Tensor& x, const torch::Tensor& weight) {
  const auto dt = x.scalar_type();
  if (!x.is_cuda() || !k::built_with_cuda() || x.dim() < 1 || weight.dim() != 2 || !weight.is_contiguous() ||
      weight.size(1) != x.size(-1) || weight.scalar_type() != dt || weight.device() != x.device() ||
      (dt != torch::kBFloat16 && dt != torch::kFloat32) || x.numel() == 0 || weight.size(0) == 0)
    return false;
  if (detail::backward_needed(x, weight)) return false;
  const int64_t rows = x.numel() / x.size(-1);
  return rows <= k::kGemvMaxRows && detail::row_stride(x).has_value();
}

namespace {

// The parameters of x W^T into a new tensor `out` of out_cols columns (weight's rows where -1; shapes checked by
// gemv_supported).
k::GemvParams gemv_params(const torch::Tensor& x, const torch::Tensor& weight, torch::Tensor& out,
                          int64_t out_cols = -1) {
  auto shape = x.sizes().vec();
  shape.back() = out_cols < 0 ? weight.size(0) : out_cols;
  out = torch::empty(shape, x.options());
  k::GemvParams p;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.out = out.data_ptr();
  p.k = x.size(-1);
  p.rows = x.numel() / p.k;
  p.m = weight.size(0);
  p.x_row_stride = *detail::row_stride(x);
  p.dtype = x.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  return p;
}

void run_gemv(const k::GemvParams& p, torch::Device device, const char* what) {
  const char* err = k::check_gemv_params(p, true);
  RTP_CHECK(!*err, what, ": ", err);
#ifdef RTPURBO_WITH_CUDA
  const DeviceLaunch launch(device);
  const cudaError_t e = k::gemv_cuda(p, launch.stream());
  RTP_CHECK(e == cudaSuccess, what, ": CUDA kernel failed: ", cudaGetErrorString(e));
#else
  (void)device;
  RTP_CHECK(false, what, ": built without CUDA");
#endif
}

}  // namespace

torch::Tensor linear_decode(const torch::Tensor& x, const torch::Tensor& weight, k::GemvLayout layout) {
  if (!gemv_supported(x, weight)) return at::linear(x, weight);
  torch::Tensor out;
  k::GemvParams p = gemv_params(x, weight, out);
  p.layout = layout;
  run_gemv(p, x.device(), "linear_decode");
  return out;
}

torch::Tensor linear_decode_logits(const torch::Tensor& x, const torch::Tensor& weight, k::GemvLayout layout) {
  if (!gemv_supported(x, weight)) return at::linear(x, weight).to(torch::kFloat32);
  torch::Tensor out;
  k::GemvParams p = gemv_params(x, weight, out);
  if (x.scalar_type() != torch::kFloat32) {
    out = torch::empty(out.sizes(), out.options().dtype(torch::kFloat32));
    p.out = out.data_ptr();
    p.out_float32 = true;
  }
  p.layout = layout;
  run_gemv(p, x.device(), "linear_decode_logits");
  return out;
}

bool gemv_swiglu_supported(const torch::Tensor& x, const torch::Tensor& weight) {
  return gemv_supported(x, weight) && weight.size(0) % 2 == 0;
}

torch::Tensor linear_decode_swiglu(const torch::Tensor& x, const torch::Tensor& weight) {
  RTP_CHECK(gemv_swiglu_supported(x, weight),
            "linear_decode_swiglu: expected x [..., k] of at most ", k::kGemvMaxRows,
            " rows on a GPU (no gradient) and weight [2I, k] contiguous, of x's dtype (bf16 or float32) and device; found "
            "x ", x.sizes(), " ", x.scalar_type(), " on ", x.device(), ", weight ", weight.sizes(), " ",
            weight.scalar_type(), " on ", weight.device());
  torch::Tensor out;
  k::GemvParams p = gemv_params(x, weight, out, weight.size(0) / 2);
  p.swiglu = true;
  run_gemv(p, x.device(), "linear_decode_swiglu");
  return out;
}

bool gemv_add_rms_norm_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& residual,
                                 const torch::Tensor& norm_weight, const torch::Tensor& done) {
  if (!gemv_supported(x, weight)) return false;
  const int64_t m = weight.size(0), rows = x.numel() / x.size(-1);
  const auto same = [&](const torch::Tensor& t) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.is_contiguous();
  };
  return same(residual) && residual.dim() >= 1 && residual.size(-1) == m && residual.numel() == rows * m &&
         same(norm_weight) && norm_weight.dim() == 1 && norm_weight.size(0) == m && detail::is_launch_counter(done, x, 1);
}

std::pair<torch::Tensor, torch::Tensor> linear_decode_add_rms_norm(const torch::Tensor& x, const torch::Tensor& weight,
                                                                   const torch::Tensor& residual,
                                                                   const torch::Tensor& norm_weight, double eps,
                                                                   const torch::Tensor& done) {
  RTP_CHECK(gemv_add_rms_norm_supported(x, weight, residual, norm_weight, done),
            "linear_decode_add_rms_norm: expected x [..., k] of at most ", k::kGemvMaxRows,
            " rows on a GPU, weight [m, k], residual of x's rows times m and norm_weight [m] (contiguous, x's dtype and "
            "device), done int32 on that device; found x ", x.sizes(), " ", x.scalar_type(), " on ", x.device(),
            ", weight ", weight.sizes(), ", residual ", residual.sizes(), ", norm_weight ", norm_weight.sizes(),
            ", done ", done.sizes(), " ", done.scalar_type());
  torch::Tensor out;
  auto p = gemv_params(x, weight, out);
  auto sum = torch::empty_like(residual), normed = torch::empty_like(residual);
  p.residual = residual.data_ptr();
  p.norm_weight = norm_weight.data_ptr();
  p.sum_out = sum.data_ptr();
  p.normed_out = normed.data_ptr();
  p.done = static_cast<uint32_t*>(done.data_ptr());
  p.eps = static_cast<float>(eps);
  run_gemv(p, x.device(), "linear_decode_add_rms_norm");
  return {sum, normed};
}

bool gemv_qk_norm_rope_supported(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& q_weight,
                                 const torch::Tensor& k_weight, const torch::Tensor& cos, const torch::Tensor& sin,
                                 int64_t q_heads, int64_t k_heads, const torch::Tensor& done,
                                 const QkvTokenStore& store) {
  if (!gemv_supported(x, weight) || x.dim() != 3 || q_heads <= 0 || k_heads <= 0) return false;
  if (store.requested()) {
    const auto& kc = store.k_cache;
    const auto cache = [&](const torch::Tensor& c) {
      return c.defined() && c.device() == x.device() && c.scalar_type() == x.scalar_type() && c.is_contiguous() &&
             c.dim() == 4 && c.size(0) == x.size(0) && c.size(1) == k_heads && c.size(2) > 0 &&
             c.size(3) == q_weight.numel() && c.sizes() == kc.sizes();
    };
    const auto& pos = store.position;
    if (!cache(kc) || !cache(store.v_cache) || x.size(1) != 1 || !pos.defined() || pos.device() != x.device() ||
        pos.scalar_type() != torch::kInt64 || pos.numel() != 1 || !detail::is_launch_counter(done, x, q_heads + 2 * k_heads))
      return false;
  }
  const int64_t D = q_weight.defined() ? q_weight.numel() : 0, T = x.size(1);
  const auto same = [&](const torch::Tensor& t) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.is_contiguous() &&
           t.dim() == 1 && t.size(0) == D;
  };
  const auto table = [&](const torch::Tensor& t) {
    return t.defined() && t.device() == x.device() && t.scalar_type() == torch::kFloat32 && t.is_contiguous() &&
           t.dim() == 2 && t.size(0) == T && t.size(1) == D;
  };
  return D > 0 && D % k::kGemvEpilogueHeadDimMultiple == 0 && D <= k::kGemvEpilogueMaxHeadDim && same(q_weight) &&
         same(k_weight) && weight.size(0) == (q_heads + 2 * k_heads) * D && table(cos) && table(sin) &&
         detail::is_launch_counter(done, x, q_heads + k_heads);
}

ProjectedQkv linear_decode_qk_norm_rope(const torch::Tensor& x, const torch::Tensor& weight,
                                        const torch::Tensor& q_weight, const torch::Tensor& k_weight,
                                        const torch::Tensor& cos, const torch::Tensor& sin, int64_t q_heads,
                                        int64_t k_heads, double eps, const torch::Tensor& done, k::GemvLayout layout,
                                        const QkvTokenStore& store) {
  // One check on the way that launches (with the store it covers the launch without it); the two below only say
  // which part was refused.
  if (!gemv_qk_norm_rope_supported(x, weight, q_weight, k_weight, cos, sin, q_heads, k_heads, done, store)) {
    RTP_CHECK(gemv_qk_norm_rope_supported(x, weight, q_weight, k_weight, cos, sin, q_heads, k_heads, done),
              "linear_decode_qk_norm_rope: expected x [B, T, k] of at most ", k::kGemvMaxRows,
              " rows on a GPU, weight [(q_heads + 2 k_heads) head_dim, k], q/k norm weights [head_dim] (a multiple of ",
              k::kGemvEpilogueHeadDimMultiple, ", at most ", k::kGemvEpilogueMaxHeadDim,
              ") of x's dtype, cos and sin float32 [T, head_dim], done int32 of at least q_heads + k_heads elements; "
              "found x ", x.sizes(), " ", x.scalar_type(), " on ", x.device(), ", weight ", weight.sizes(), ", q_weight ",
              q_weight.sizes(), ", k_weight ", k_weight.sizes(), ", cos ", cos.sizes(), ", sin ", sin.sizes(),
              ", heads ", q_heads, "/", k_heads, ", done ", done.sizes(), " ", done.scalar_type());
    RTP_THROW("linear_decode_qk_norm_rope: the token store takes one token per sequence (x [B, 1, k]), k_cache and "
              "v_cache [B, k_heads, capacity, head_dim] contiguous in x's dtype and device, position int64 [1] there, "
              "done of at least q_heads + 2 k_heads elements; found x ", x.sizes(), ", k_cache ",
              store.k_cache.defined() ? store.k_cache.sizes() : torch::IntArrayRef{}, ", v_cache ",
              store.v_cache.defined() ? store.v_cache.sizes() : torch::IntArrayRef{}, ", position ",
              store.position.defined() ? store.position.sizes() : torch::IntArrayRef{}, ", done ", done.sizes());
  }
  ProjectedQkv r;
  auto p = gemv_params(x, weight, r.qkv);
  p.layout = layout;
  const int64_t B = x.size(0), T = x.size(1), D = q_weight.numel();
  r.q_normed = torch::empty({B, T, q_heads, D}, x.options());
  r.q_roped = torch::empty_like(r.q_normed);
  r.k_normed = torch::empty({B, T, k_heads, D}, x.options());
  r.k_roped = torch::empty_like(r.k_normed);
  auto& h = p.head_norm_rope;
  h.q_weight = q_weight.data_ptr(), h.k_weight = k_weight.data_ptr();
  h.cos = cos.data_ptr<float>(), h.sin = sin.data_ptr<float>();
  h.q_normed = r.q_normed.data_ptr(), h.q_roped = r.q_roped.data_ptr();
  h.k_normed = r.k_normed.data_ptr(), h.k_roped = r.k_roped.data_ptr();
  h.done = static_cast<uint32_t*>(done.data_ptr());
  h.q_heads = q_heads, h.k_heads = k_heads, h.head_dim = D, h.seq_len = T;
  h.eps = static_cast<float>(eps);
  if (store.requested()) {
    h.k_cache = store.k_cache.data_ptr(), h.v_cache = store.v_cache.data_ptr();
    h.position = store.position.data_ptr<int64_t>();
    h.capacity = store.k_cache.size(2);
  }
  run_gemv(p, x.device(), "linear_decode_qk_norm_rope");
  return r;
}

bool gemv_moe_route_supported(const torch::Tensor& x, const torch::Tensor& weight, int64_t top_k,
                              const torch::Tensor& done) {
  return gemv_supported(x, weight) && weight.size(0) <= k::kMoeRouterMaxExperts && top_k >= 1 &&
         top_k <= std::min<int64_t>(weight.size(0), k::kMoeRouterMaxTopK) && detail::is_launch_counter(done, x, 1);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> linear_decode_moe_route(
    const torch::Tensor& x, const torch::Tensor& weight, int64_t top_k, bool norm_topk_prob, const torch::Tensor& done,
    k::GemvLayout layout) {
  RTP_CHECK(gemv_moe_route_supported(x, weight, top_k, done), "linear_decode_moe_route: expected x [..., H] of at most ",
            k::kGemvMaxRows, " rows on a GPU, weight [E, H] with E at most ", k::kMoeRouterMaxExperts,
            ", top_k in [1, min(E, ", k::kMoeRouterMaxTopK, ")], done int32 on x's device; found x ", x.sizes(), " ",
            x.scalar_type(), " on ", x.device(), ", weight ", weight.sizes(), ", top_k ", top_k, ", done ",
            done.sizes(), " ", done.scalar_type());
  torch::Tensor logits;
  auto p = gemv_params(x, weight, logits);
  p.layout = layout;
  auto expert = torch::empty({p.rows, top_k}, x.options().dtype(torch::kInt64));
  auto routing = torch::empty({p.rows, top_k}, x.options());
  auto& r = p.moe_route;
  r.expert = expert.data_ptr<int64_t>();
  r.weight = routing.data_ptr();
  r.done = static_cast<uint32_t*>(done.data_ptr());
  r.top_k = top_k;
  r.norm_topk_prob = norm_topk_prob;
  run_gemv(p, x.device(), "linear_decode_moe_route");
  return {logits, expert, routing};
}

bool gemv_preferred(const torch::Tensor& weight, int64_t max_ratio) {
  return weight.dim() == 2 && weight.size(0) <= max_ratio * weight.size(1);
}

torch::Tensor project(const torch::Tensor& x, const torch::Tensor& weight, int64_t max_ratio, k::GemvLayout layout) {
  return gemv_preferred(weight, max_ratio) ? linear_decode(x, weight, layout) : at::linear(x, weight);
}

}  // namespace rtp::ops
