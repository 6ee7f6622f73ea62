#pragma once
// A layer's decode-token store (rtp/kernels/sparse_token_store.h) with random contents, shared by the CPU reference
// test and the CUDA test: KV heads alternating retrieval / streaming, strided source rows, caches holding random
// values (every element the store must not touch is compared too), and the expected caches from torch ops in
// float64.
#include <torch/torch.h>

#include <vector>

#include "rtp/kernels/sparse_token_store.h"

namespace rtp::testing {

struct TokenStoreCase {
  int64_t Hkv = 4, G = 3, D = 40, I = 16, cap = 11, ring_cap = 6, position = 7, ring_slot = 4;
  std::vector<bool> retrieval = {true, false, true, false};
  // Sources (rows strided inside wider tensors) and weights, float32 on the CPU.
  torch::Tensor k_wide, v_wide, ksrc, qsrc, kw, qw;
  // Caches before the store.
  torch::Tensor full_k, full_v, index_keys, index_q, ring_k, ring_v;

  int64_t n_ret() const {
    int64_t n = 0;
    for (bool r : retrieval) n += r;
    return n;
  }

  explicit TokenStoreCase(uint64_t seed, int64_t head_dim = 40) : D(head_dim) {
    torch::manual_seed(seed);
    const int64_t R = n_ret(), S = Hkv - R;
    k_wide = torch::randn({Hkv, D + 3});
    v_wide = torch::randn({Hkv, 2 * D});
    ksrc = torch::randn({Hkv, D});
    qsrc = torch::randn({Hkv * G, D});
    kw = torch::randn({R, I, D}) / 4;
    qw = torch::randn({R * G, I, D}) / 4;
    full_k = torch::randn({R, cap, D});
    full_v = torch::randn({R, cap, D});
    index_keys = torch::randn({R, cap, I});
    index_q = torch::randn({R, G, I});
    ring_k = torch::randn({S, ring_cap, D});
    ring_v = torch::randn({S, ring_cap, D});
  }

  // The same case with every tensor rounded to `dtype` (kept float32): the inputs a bf16 run sees.
  TokenStoreCase rounded_to(torch::ScalarType dtype) const {
    TokenStoreCase r = *this;
    for (torch::Tensor* t : {&r.k_wide, &r.v_wide, &r.ksrc, &r.qsrc, &r.kw, &r.qw, &r.full_k, &r.full_v,
                             &r.index_keys, &r.index_q, &r.ring_k, &r.ring_v})
      *t = t->to(dtype).to(torch::kFloat32);
    return r;
  }

  torch::Tensor k() const { return k_wide.narrow(1, 0, D); }
  torch::Tensor v() const { return v_wide.narrow(1, D / 2, D); }

  // The caches after the store, float64: {full_k, full_v, index_keys, index_q, ring_k, ring_v}. Sources and weights
  // are read as given (round them first to compare with a bf16 run).
  std::vector<torch::Tensor> expected(const torch::Tensor& k_in, const torch::Tensor& v_in, const torch::Tensor& ks,
                                      const torch::Tensor& qs, const torch::Tensor& kwt, const torch::Tensor& qwt) const {
    const auto d = [](const torch::Tensor& t) { return t.cpu().to(torch::kFloat64); };
    auto fk = d(full_k), fv = d(full_v), ik = d(index_keys), iq = d(index_q), rk = d(ring_k), rv = d(ring_v);
    int64_t r = 0, s = 0;
    for (int64_t g = 0; g < Hkv; ++g) {
      if (!retrieval[g]) {
        rk[s][ring_slot].copy_(d(k_in[g]));
        rv[s][ring_slot].copy_(d(v_in[g]));
        ++s;
        continue;
      }
      fk[r][position].copy_(d(k_in[g]));
      fv[r][position].copy_(d(v_in[g]));
      ik[r][position].copy_(torch::mv(d(kwt[r]), d(ks[g])));
      for (int64_t j = 0; j < G; ++j) iq[r][j].copy_(torch::mv(d(qwt[r * G + j]), d(qs[g * G + j])));
      ++r;
    }
    return {fk, fv, ik, iq, rk, rv};
  }

  // Parameters over the given tensors (all of one dtype except index_keys); position and ring_slot point at
  // int64 values where the kernel runs.
  kernels::SparseTokenStoreParams params(const torch::Tensor& k_in, const torch::Tensor& v_in, const torch::Tensor& ks,
                                         const torch::Tensor& qs, const torch::Tensor& kwt, const torch::Tensor& qwt,
                                         std::vector<torch::Tensor>& caches, const int64_t* pos,
                                         const int64_t* slot) const {
    kernels::SparseTokenStoreParams p;
    p.dtype = k_in.scalar_type() == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
    p.index_dtype = caches[2].scalar_type() == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
    p.kv_heads = static_cast<int>(Hkv), p.group_size = static_cast<int>(G);
    p.head_dim = static_cast<int>(D), p.index_dim = static_cast<int>(I);
    int r = 0, s = 0;
    for (int64_t g = 0; g < Hkv; ++g) {
      p.retrieval_slot_of[g] = static_cast<int8_t>(retrieval[g] ? r++ : -1);
      p.streaming_slot_of[g] = static_cast<int8_t>(retrieval[g] ? -1 : s++);
    }
    p.k = k_in.data_ptr(), p.k_head_stride = k_in.stride(0);
    p.v = v_in.data_ptr(), p.v_head_stride = v_in.stride(0);
    p.index_k_src = ks.data_ptr(), p.index_k_src_head_stride = ks.stride(0);
    p.index_q_src = qs.data_ptr(), p.index_q_src_head_stride = qs.stride(0);
    p.full_k = caches[0].data_ptr(), p.full_v = caches[1].data_ptr(), p.index_keys = caches[2].data_ptr();
    p.index_q_out = caches[3].data_ptr();
    p.index_k_weight = kwt.data_ptr(), p.index_q_weight = qwt.data_ptr();
    p.full_capacity = cap;
    p.ring_k = caches[4].data_ptr(), p.ring_v = caches[5].data_ptr(), p.ring_capacity = ring_cap;
    p.position = pos, p.ring_slot = slot;
    return p;
  }
};

}  // namespace rtp::testing
