// CUDA kernels against the CPU references on random inputs and awkward sizes. The kernel's error against an
// fp64-accumulated reference must be at most twice that of a naive bf16 implementation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/kernels/sparse_attention.h"
#include "rtp/ops/sparse_attention.h"

using rtp::kernels::HeadKind;
using namespace rtp::ops;

namespace {

bool have_gpu() { return rtp::kernels::built_with_cuda() && torch::cuda::is_available(); }

// Every prefill test runs each CUDA prefill kernel this device can run (wgmma only on an sm_90a build on Hopper).
std::vector<rtp::kernels::PrefillKernel> prefill_kernels() {
  std::vector<rtp::kernels::PrefillKernel> ks{rtp::kernels::PrefillKernel::MMA_SYNC};
#ifdef RTPURBO_WITH_CUDA
  if (rtp::kernels::prefill_wgmma_available()) {
    ks.push_back(rtp::kernels::PrefillKernel::WGMMA);
    ks.push_back(rtp::kernels::PrefillKernel::WGMMA_WS);
  } else {
    std::printf("note: the wgmma prefill kernel cannot run here (needs an sm_90a build on a 9.0 device)\n");
  }
#endif
  return ks;
}
const char* kernel_name(rtp::kernels::PrefillKernel k) {
  switch (k) {
    case rtp::kernels::PrefillKernel::WGMMA: return "wgmma";
    case rtp::kernels::PrefillKernel::WGMMA_WS: return "wgmma_ws";
    default: return "mma.sync";
  }
}

double rel_err(const torch::Tensor& a, const torch::Tensor& ref) {
  auto d = (a.to(torch::kFloat64).cpu() - ref.to(torch::kFloat64).cpu());
  return (d.norm() / ref.to(torch::kFloat64).cpu().norm()).item<double>();
}

// Naive bf16: scores, probabilities and output each rounded to bf16, under the same mask.
torch::Tensor naive_bf16(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& mask) {
  const int64_t G = q.size(0) / k.size(0);
  auto kk = k.repeat_interleave(G, 0), vv = v.repeat_interleave(G, 0);
  auto s = torch::matmul(q, kk.transpose(1, 2)) * (1.0 / std::sqrt(double(q.size(2))));
  s = s.masked_fill(mask.logical_not(), -INFINITY);
  auto p = torch::softmax(s.to(torch::kFloat32), -1).to(torch::kBFloat16);
  return torch::matmul(p, vv);
}

torch::Tensor build_mask(const std::vector<HeadKind>& kinds, int64_t G, int64_t T, const SparseConfig& c,
                         const BlockLists& l) {
  auto ar = torch::arange(T);
  auto i = ar.view({T, 1}), j = ar.view({1, T});
  std::vector<torch::Tensor> ms;
  auto counts = l.counts.defined() ? l.counts.cpu() : torch::Tensor();
  auto idx = l.indices.defined() ? l.indices.cpu() : torch::Tensor();
  int r = 0;
  for (auto kd : kinds) {
    torch::Tensor m = j <= i;
    if (kd == HeadKind::STREAMING) m = m & ((j < c.sink) | (j > i - c.window));
    if (kd == HeadKind::RETRIEVAL) {
      const int64_t nb = (T + c.block_size - 1) / c.block_size;
      auto bm = torch::zeros({nb, nb}, torch::kBool);
      for (int64_t b = 0; b < nb; ++b)
        for (int n = 0; n < counts[r][b].item<int>(); ++n) bm[b][idx[r][b][n].item<int>()] = true;
      auto bi = torch::floor_divide(ar, c.block_size);
      m = m & bm.index({bi.view({T, 1}), bi.view({1, T})});
      ++r;
    }
    for (int64_t g = 0; g < G; ++g) ms.push_back(m);
  }
  return torch::stack(ms);
}

// Random bf16-representable decode inputs (held in float32 for the CPU reference): two full and two ring caches,
// n_ret retrieval heads whose index vectors are scaled by index_scale (sharper index probabilities).
DecodeInputs random_decode_inputs(int64_t Hq, int64_t G, int64_t D, int64_t cap, int64_t ring, int64_t n_ret,
                                  double index_scale, int64_t kv_len) {
  auto r = [](std::vector<int64_t> shape) { return torch::randn(shape).to(torch::kBFloat16).to(torch::kFloat32); };
  DecodeInputs in;
  in.q = r({Hq, D});
  in.k_full = r({2, cap, D});
  in.v_full = r({2, cap, D});
  in.k_ring = r({2, ring, D});
  in.v_ring = r({2, ring, D});
  in.index_q = r({n_ret, G, 16}) * index_scale;
  in.index_k = r({n_ret, cap, 16}) * index_scale;
  in.kv_len = kv_len;
  return in;
}

// ---- The decode yardstick: a naive bf16 decode over the keys each query head is meant to attend.

// P(j), j in [0, kv_len), of each retrieval head (kinds order): the group mean of the index softmax, in the CPU
// reference's arithmetic and order of operations (sparse_decode_cpu in kernels/src/sparse_attention_ref.cpp), so
// that the bins and the cut of decode_topp_selection land exactly where the reference's do.
std::vector<std::vector<double>> decode_index_probabilities(const DecodeInputs& in, int64_t nret) {
  std::vector<std::vector<double>> out;
  if (nret == 0) return out;
  const auto iq = in.index_q.to(torch::kCPU, torch::kFloat32).contiguous();
  const auto ik = in.index_k.to(torch::kCPU, torch::kFloat32).contiguous();
  const int64_t L = in.kv_len, G = iq.size(1), cap = ik.size(1), dim = rtp::kernels::kIndexDim;
  const float* iqp = iq.data_ptr<float>();
  const float* ikp = ik.data_ptr<float>();
  std::vector<double> s(L);
  for (int64_t r = 0; r < nret; ++r) {
    std::vector<double> P(L, 0.0);
    const float* ikr = ikp + r * cap * dim;
    for (int64_t hh = 0; hh < G; ++hh) {
      const float* q = iqp + (r * G + hh) * dim;
      double mx = -1e300;
      for (int64_t j = 0; j < L; ++j) {
        double u = 0;
        for (int64_t d = 0; d < dim; ++d) u += double(q[d]) * ikr[j * dim + d];
        s[j] = u * 0.25;  // 1 / sqrt(16)
        mx = std::max(mx, s[j]);
      }
      double z = 0;
      for (int64_t j = 0; j < L; ++j) z += std::exp(s[j] - mx);
      for (int64_t j = 0; j < L; ++j) P[j] += std::exp(s[j] - mx) / z / double(G);
    }
    out.push_back(std::move(P));
  }
  return out;
}

bool decode_forced(int64_t j, int64_t L, const SparseConfig& c) { return j < c.keep_first || j > L - 1 - c.keep_last; }

// The reference's top-p set from P (sparse_attention_params.h): bin(P) = min(NB-1, floor(-8 log2 P)) clamped at 0
// (P = 0: NB-1); b* the first bin at which the forced tokens' mass plus the histogram's cumulative mass reaches
// top_p * Z (-1 when the forced mass alone does; NB-1 when top_p >= 1); selected = forced tokens plus every token of
// bin <= b*. The same sums in the same order as the reference.
std::vector<char> decode_topp_selection(const std::vector<double>& P, const SparseConfig& c) {
  constexpr int NB = rtp::kernels::kDecodeBins;
  const int64_t L = int64_t(P.size());
  std::vector<double> hist(NB, 0.0);
  std::vector<int> bin(L);
  double forced = 0;
  for (int64_t j = 0; j < L; ++j) {
    bin[j] = P[j] > 0 ? int(std::min<double>(NB - 1, std::max(0.0, std::floor(-rtp::kernels::kDecodeBinsPerOctave *
                                                                                 std::log2(P[j])))))
                      : NB - 1;
    if (decode_forced(j, L, c)) forced += P[j];
    else hist[bin[j]] += P[j];
  }
  int bstar = NB - 1;
  if (c.top_p < 1.f) {
    double Z = forced;
    for (int b = 0; b < NB; ++b) Z += hist[b];
    const double need = double(c.top_p) * Z;
    double acc = forced;
    if (acc >= need) {
      bstar = -1;
    } else {
      for (int b = 0; b < NB; ++b) {
        acc += hist[b];
        if (acc >= need) {
          bstar = b;
          break;
        }
      }
    }
  }
  std::vector<char> sel(L);
  for (int64_t j = 0; j < L; ++j) sel[j] = decode_forced(j, L, c) || bin[j] <= bstar;
  return sel;
}

// The forced tokens plus the n - |forced| non-forced tokens of largest P (lower position first on equal P). Bins
// fall as P rises, so every top-p set is such a prefix: the reference's for its own count (checked in
// decode_cpu_and_gpu), and the GPU's, from its single-precision P, for the GPU's count up to tokens whose P differ
// by less than that rounding. *splits_tie: the prefix ends inside a run of equal P (no bin rule gives such a set).
std::vector<char> decode_prefix_selection(const std::vector<double>& P, const SparseConfig& c, int64_t n,
                                          bool* splits_tie = nullptr) {
  const int64_t L = int64_t(P.size());
  std::vector<char> sel(L, 0);
  std::vector<int64_t> rest;
  for (int64_t j = 0; j < L; ++j) {
    if (decode_forced(j, L, c)) sel[j] = 1, --n;
    else rest.push_back(j);
  }
  n = std::clamp<int64_t>(n, 0, int64_t(rest.size()));
  std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return P[a] > P[b]; });
  for (int64_t i = 0; i < n; ++i) sel[rest[i]] = 1;
  if (splits_tie) *splits_tie = n > 0 && n < int64_t(rest.size()) && P[rest[n - 1]] == P[rest[n]];
  return sel;
}

// Attention of every query head at t = kv_len - 1 over the keys its KV head attends, read from the caches as the op
// lays them out (sparse_attention_params.h): DENSE all tokens [0, kv_len) of its full slot (row j = token j);
// STREAMING the sinks j < sink and the window j > t - window of its ring slot (token j in slot j if j < sink, else
// in slot sink + (j - sink) % window); RETRIEVAL the tokens of `selected` (one set per retrieval head, kinds order)
// of its full slot. Full slots go to DENSE and RETRIEVAL heads, ring slots to STREAMING heads, in kinds order.
// dt bf16: the naive bf16 decode (scores, probabilities and output each rounded to bf16, the softmax in float32, as
// naive_bf16); dt float64: exact attention over the same keys. Computed on `dev`, returned [Hq, D] on the CPU.
torch::Tensor decode_yardstick(const DecodeInputs& in, const std::vector<HeadKind>& kinds, const SparseConfig& c,
                               const std::vector<std::vector<char>>& selected, torch::ScalarType dt,
                               torch::Device dev) {
  const int64_t L = in.kv_len, t = L - 1, Hkv = int64_t(kinds.size()), G = in.q.size(0) / Hkv, D = in.q.size(1);
  const auto softmax_dt = dt == torch::kBFloat16 ? torch::kFloat32 : dt;
  int64_t nfull = 0, nstr = 0, nret = 0;
  std::vector<torch::Tensor> outs;
  for (int64_t g = 0; g < Hkv; ++g) {
    std::vector<int64_t> rows;
    torch::Tensor kc, vc;
    if (kinds[g] == HeadKind::STREAMING) {
      kc = in.k_ring[nstr], vc = in.v_ring[nstr];
      ++nstr;
      for (int64_t j = 0; j <= t; ++j)
        if (j < c.sink || j > t - c.window) rows.push_back(j < c.sink ? j : c.sink + (j - c.sink) % c.window);
    } else {
      kc = in.k_full[nfull], vc = in.v_full[nfull];
      ++nfull;
      const std::vector<char>* sel = kinds[g] == HeadKind::RETRIEVAL ? &selected.at(size_t(nret++)) : nullptr;
      for (int64_t j = 0; j <= t; ++j)
        if (!sel || sel->at(size_t(j))) rows.push_back(j);
    }
    const auto idx = torch::tensor(rows, torch::kLong).to(kc.device());
    const auto k = kc.index_select(0, idx).to(dev, dt), v = vc.index_select(0, idx).to(dev, dt);
    const auto q = in.q.narrow(0, g * G, G).to(dev, dt);
    const auto s = torch::matmul(q, k.t()) * (1.0 / std::sqrt(double(D)));
    const auto p = torch::softmax(s.to(softmax_dt), -1).to(dt);
    outs.push_back(torch::matmul(p, v).cpu());
  }
  return torch::cat(outs, 0);
}

struct DecodeRun {
  torch::Tensor ref, out;              // CPU reference and GPU outputs [Hq, D]
  torch::Tensor selected_cpu, selected_gpu;  // int32 [n_ret] on the host
  std::vector<std::vector<double>> P;        // per retrieval head: the index probabilities
  // Per retrieval head: the tokens the yardstick attends: the reference's top-p set, or, where the GPU's count
  // differs from the reference's (sets_from_gpu_counts), the prefix of the GPU's length (decode_prefix_selection).
  std::vector<std::vector<char>> selected;
  bool sets_from_gpu_counts = false, splits_tie = false;
  torch::Tensor exact;  // float64 attention over `selected`: `ref` itself unless sets_from_gpu_counts
  torch::Tensor naive;  // naive bf16 decode over `selected` (on the GPU where it ran)
};

// The same inputs through the CPU reference and the CUDA kernels; bstar_in_attend: b* found by every retrieval
// attend block instead of the last hist block; bf16_index: the GPU gets the indexer in bf16 (the tensor-core
// stats/hist passes), both get its values rounded to bf16. Also the yardstick (naive bf16 over the reference's
// key sets, whose counts must equal the reference's). run_gpu false: the CPU half only (out and selected_gpu
// undefined, the naive bf16 decode computed on the CPU).
DecodeRun decode_cpu_and_gpu(const DecodeInputs& in_, const std::vector<HeadKind>& kinds, SparseConfig c,
                             bool bstar_in_attend = true, bool bf16_index = false, bool run_gpu = true) {
  DecodeRun run;
  DecodeInputs in = in_;
  if (bf16_index)
    for (auto* t : {&in.index_q, &in.index_k}) *t = t->to(torch::kBFloat16).to(torch::kFloat32);
  run.ref = sparse_decode(in, kinds, c, &run.selected_cpu);
  const int64_t nret = std::count(kinds.begin(), kinds.end(), HeadKind::RETRIEVAL);
  run.P = decode_index_probabilities(in, nret);
  for (int64_t r = 0; r < nret; ++r) {
    run.selected.push_back(decode_topp_selection(run.P[r], c));
    const int64_t n = std::count(run.selected[r].begin(), run.selected[r].end(), char(1));
    EXPECT_EQ(n, run.selected_cpu[r].item<int>()) << "the yardstick's top-p set, retrieval head " << r;
    EXPECT_TRUE(decode_prefix_selection(run.P[r], c, n) == run.selected[r]) << "retrieval head " << r;
  }
  run.exact = run.ref;
  if (run_gpu) {
    DecodeInputs ig = in;
    for (auto* t : {&ig.q, &ig.k_full, &ig.v_full, &ig.k_ring, &ig.v_ring, &ig.index_q, &ig.index_k}) *t = t->cuda();
    if (bf16_index)
      for (auto* t : {&ig.index_q, &ig.index_k}) *t = t->to(torch::kBFloat16);
    c.decode_tuning.bstar_in_attend = bstar_in_attend;
    run.out = sparse_decode(ig, kinds, c, &run.selected_gpu).cpu();
    run.selected_gpu = run.selected_gpu.cpu();
    // A GPU count other than the reference's (a token or a bin on an edge under single precision): the GPU
    // attended another set, so its output is held to the exact and the naive attention over that set.
    for (int64_t r = 0; r < nret; ++r) {
      const int ngpu = run.selected_gpu[r].item<int>();
      if (ngpu == run.selected_cpu[r].item<int>()) continue;
      bool tie = false;
      run.selected[r] = decode_prefix_selection(run.P[r], c, ngpu, &tie);
      run.sets_from_gpu_counts = true;
      run.splits_tie = run.splits_tie || tie;
    }
    if (run.sets_from_gpu_counts)
      run.exact = decode_yardstick(in, kinds, c, run.selected, torch::kFloat64, torch::kCPU);
  }
  run.naive = decode_yardstick(in, kinds, c, run.selected, torch::kBFloat16, run_gpu ? torch::kCUDA : torch::kCPU);
  return run;
}

}  // namespace

TEST(SparseAttentionGpu, PrefillMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(1);
  // sink 100: a tile of sinks only, then one that straddles the sinks' end; windows of 150 and 300 put a window's
  // first key mid-tile and leave the kernels' mask-free middle steps for the streaming heads as well
  struct Case { int64_t T, D; int B; int64_t Hq, Hkv, sink = 5, window = 150; };
  for (auto cs : {Case{1000, 128, 64, 8, 4}, Case{333, 64, 64, 4, 2}, Case{700, 128, 128, 6, 3}, Case{130, 64, 128, 2, 2},
                  Case{64 * 5, 128, 64, 12, 4}, Case{1500, 128, 64, 8, 4, 100, 300}, Case{900, 64, 128, 4, 2, 100, 300}}) {
    std::vector<HeadKind> kinds;
    for (int64_t g = 0; g < cs.Hkv; ++g) kinds.push_back(g % 3 == 0 ? HeadKind::STREAMING : g % 3 == 1 ? HeadKind::RETRIEVAL : HeadKind::DENSE);
    const int64_t R = std::count(kinds.begin(), kinds.end(), HeadKind::RETRIEVAL), G = cs.Hq / cs.Hkv;
    SparseConfig c;
    c.sink = cs.sink;
    c.window = cs.window;
    c.block_size = cs.B;
    c.top_p = 0.7f;
    auto q = torch::randn({cs.Hq, cs.T, cs.D}).to(torch::kBFloat16), k = torch::randn({cs.Hkv, cs.T, cs.D}).to(torch::kBFloat16),
         v = torch::randn({cs.Hkv, cs.T, cs.D}).to(torch::kBFloat16);
    auto iq = torch::randn({R, G, cs.T, 16}) * 2, ik = torch::randn({R, cs.T, 16}) * 2;
    BlockLists lists = select_blocks(iq, ik, c);  // CPU lists shared by both paths
    auto ref = sparse_attention(q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32), kinds, lists, c);
    auto mask = build_mask(kinds, G, cs.T, c, lists).cuda();
    auto naive = naive_bf16(q.cuda(), k.cuda(), v.cuda(), mask);
    for (auto kern : prefill_kernels()) {
      c.prefill_kernel = kern;
      auto out = sparse_attention(q.cuda(), k.cuda(), v.cuda(), kinds, lists, c);
      torch::cuda::synchronize();
      ASSERT_FALSE(out.isnan().any().item<bool>());
      const double e_k = rel_err(out, ref), e_n = rel_err(naive, ref);
      std::printf("prefill %s T=%ld D=%ld B=%d sink=%ld window=%ld: kernel err %.3e, naive bf16 err %.3e\n",
                  kernel_name(kern), cs.T, cs.D, cs.B, cs.sink, cs.window, e_k, e_n);
      EXPECT_LE(e_k, 2 * e_n + 1e-4) << kernel_name(kern);
    }
  }
}

// A copy of t whose data starts one element past its buffer's start (2 bytes for bf16: no 16-byte alignment).
torch::Tensor misaligned_copy(const torch::Tensor& t) {
  auto buf = torch::empty({t.numel() + 1}, t.options());
  auto view = buf.narrow(0, 1, t.numel()).view(t.sizes());
  view.copy_(t);
  return view;
}

// q/k/v whose data starts 2 bytes past a 16-byte boundary (a view into a larger buffer): the op must copy them
// (the kernels' vector and TMA loads need 16-byte aligned rows) and give exactly the aligned call's output.
TEST(SparseAttentionGpu, PrefillMisalignedViewsMatchAligned) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(7);
  const int64_t T = 333, D = 128, Hq = 8, Hkv = 4, G = Hq / Hkv;
  std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::DENSE, HeadKind::STREAMING};
  SparseConfig c;
  c.sink = 5;
  c.window = 100;
  c.top_p = 0.8f;
  const auto bf = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  auto q = torch::randn({Hq, T, D}, bf), k = torch::randn({Hkv, T, D}, bf), v = torch::randn({Hkv, T, D}, bf);
  auto iq = torch::randn({1, G, T, 16}) * 2, ik = torch::randn({1, T, 16}) * 2;
  BlockLists lists = select_blocks(iq, ik, c);
  lists.counts = lists.counts.cuda();
  lists.indices = lists.indices.cuda();
  auto qm = misaligned_copy(q), km = misaligned_copy(k), vm = misaligned_copy(v);
  ASSERT_NE(reinterpret_cast<uintptr_t>(qm.data_ptr()) % 16, 0u);
  for (auto kern : prefill_kernels()) {
    c.prefill_kernel = kern;
    auto aligned_out = sparse_attention(q, k, v, kinds, lists, c);
    auto view_out = sparse_attention(qm, km, vm, kinds, lists, c);
    torch::cuda::synchronize();
    const double diff = (aligned_out.to(torch::kFloat32) - view_out.to(torch::kFloat32)).abs().max().item<double>();
    std::printf("misaligned views, %s: max |difference| to the aligned call %.3g\n", kernel_name(kern), diff);
    EXPECT_EQ(diff, 0.0) << kernel_name(kern);
  }
}

// The decode op with every input a misaligned view: exactly the aligned call's output and selection.
TEST(SparseAttentionGpu, DecodeMisalignedViewsMatchAligned) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(8);
  const int64_t G = 8, Hkv = 4, Hq = G * Hkv, D = 128, L = 3001, sink = 4, window = 500;
  std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE, HeadKind::STREAMING};
  SparseConfig c;
  c.sink = sink;
  c.window = window;
  DecodeInputs in = random_decode_inputs(Hq, G, D, L + 7, sink + window, 1, 2.0, L);
  DecodeInputs aligned = in, views = in;
  for (auto* t : {&aligned.q, &aligned.k_full, &aligned.v_full, &aligned.k_ring, &aligned.v_ring, &aligned.index_q,
                  &aligned.index_k})
    *t = t->to(torch::kCUDA, torch::kBFloat16);
  for (auto* t : {&views.q, &views.k_full, &views.v_full, &views.k_ring, &views.v_ring, &views.index_q, &views.index_k})
    *t = misaligned_copy(t->to(torch::kCUDA, torch::kBFloat16));
  torch::Tensor sel_a, sel_v;
  auto out_a = sparse_decode(aligned, kinds, c, &sel_a), out_v = sparse_decode(views, kinds, c, &sel_v);
  torch::cuda::synchronize();
  const double diff = (out_a.to(torch::kFloat32) - out_v.to(torch::kFloat32)).abs().max().item<double>();
  std::printf("decode, misaligned views: max |difference| to the aligned call %.3g, selected %d and %d\n", diff,
              sel_a.cpu()[0].item<int>(), sel_v.cpu()[0].item<int>());
  EXPECT_EQ(diff, 0.0);
  EXPECT_EQ(sel_a.cpu()[0].item<int>(), sel_v.cpu()[0].item<int>());
}

TEST(SparseAttentionGpu, SelectionMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(2);
  for (int B : {64, 128}) {
    const int64_t R = 2, G = 4, T = 64 * 37 + 11;
    SparseConfig c;
    c.block_size = B;
    c.local_blocks = 2;
    auto iq = torch::randn({R, G, T, 16}) * 1.5, ik = torch::randn({R, T, 16}) * 1.5;
    // bf16-rounded inputs so that both paths see the same numbers
    iq = iq.to(torch::kBFloat16).to(torch::kFloat32);
    ik = ik.to(torch::kBFloat16).to(torch::kFloat32);
    auto cpu = select_blocks(iq, ik, c);
    auto gpu = select_blocks(iq.cuda(), ik.cuda(), c);
    auto gc = gpu.counts.cpu(), gi = gpu.indices.cpu();
    const int64_t nb = cpu.counts.size(1);
    double inter = 0, uni = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        std::set<int> a, bb;
        for (int n = 0; n < cpu.counts[r][b].item<int>(); ++n) a.insert(cpu.indices[r][b][n].item<int>());
        int prev = -1;
        for (int n = 0; n < gc[r][b].item<int>(); ++n) {
          const int x = gi[r][b][n].item<int>();
          EXPECT_GT(x, prev);
          EXPECT_LE(x, b);
          prev = x;
          bb.insert(x);
        }
        EXPECT_TRUE(bb.count(0) && bb.count(int(b)));
        for (int x : a) inter += bb.count(x);
        uni += a.size() + bb.size();
      }
    const double jacc = inter / (uni - inter);
    std::printf("selection B=%d: Jaccard(cpu, gpu) = %.4f\n", B, jacc);
    EXPECT_GT(jacc, 0.97);
#ifdef RTPURBO_WITH_CUDA
    // The launcher with scratch of its own (no workspace given, as rtpurbo-bench calls it) writes the lists the op
    // writes with the caching allocator's workspace, and a workspace below select_blocks_workspace_bytes is refused.
    auto qd = iq.cuda(), kd = ik.cuda();
    auto counts = torch::zeros_like(gpu.counts), indices = torch::zeros_like(gpu.indices);
    rtp::kernels::BlockSelectParams p;
    p.index_q = qd.data_ptr(), p.index_k = kd.data_ptr(), p.index_dtype = rtp::kernels::DType::F32;
    p.counts = counts.data_ptr<int32_t>(), p.indices = indices.data_ptr<int32_t>();
    p.num_ret_heads = int(R), p.group_size = int(G), p.seq_len = T, p.block_size = B;
    p.local_blocks = c.local_blocks, p.max_blocks = int(gpu.indices.size(2)), p.top_p = c.top_p;
    ASSERT_EQ(rtp::kernels::select_blocks_cuda(p, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(torch::equal(counts, gpu.counts)) << "B " << B;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t n = gc[r][b].item<int64_t>();
        EXPECT_TRUE(torch::equal(indices[r][b].narrow(0, 0, n), gpu.indices[r][b].narrow(0, 0, n))) << "B " << B;
      }
    const size_t need = rtp::kernels::select_blocks_workspace_bytes(p);
    auto small = torch::empty({static_cast<int64_t>(need) - 1}, torch::TensorOptions(torch::kUInt8).device(torch::kCUDA));
    p.workspace = small.data_ptr(), p.workspace_bytes = need - 1;
    EXPECT_EQ(rtp::kernels::select_blocks_cuda(p, nullptr), cudaErrorInvalidValue);
#endif
  }
}

// Query sub-blocks on the GPU against the CPU reference: the logits kernel sees S * G rows per query block and
// the top-p kernel averages only the non-empty sub-blocks (T leaves the last block with 11 or 75 queries, so
// with S = B most of its sub-blocks are empty). Also a chunk (q_offset > 0) with S > 1.
TEST(SparseAttentionGpu, SelectBlocksWithQuerySubBlocksMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(12);
  // |cpu & gpu| / |cpu | gpu| over all lists, after checking the GPU lists are ascending, causal and hold 0 and b.
  auto jaccard = [](const BlockLists& cpu, const BlockLists& gpu, int64_t b0) {
    auto cc = cpu.counts.cpu(), ci = cpu.indices.cpu(), gc = gpu.counts.cpu(), gi = gpu.indices.cpu();
    double inter = 0, uni = 0;
    for (int64_t r = 0; r < cc.size(0); ++r)
      for (int64_t m = 0; m < cc.size(1); ++m) {
        std::set<int> a, g;
        for (int n = 0; n < cc[r][m].item<int>(); ++n) a.insert(ci[r][m][n].item<int>());
        for (int n = 0; n < gc[r][m].item<int>(); ++n) {
          const int x = gi[r][m][n].item<int>();
          EXPECT_TRUE(g.empty() || x > *g.rbegin());
          EXPECT_LE(x, b0 + m);
          g.insert(x);
        }
        EXPECT_TRUE(g.count(0) && g.count(int(b0 + m)));
        for (int x : a) inter += g.count(x);
        uni += a.size() + g.size();
      }
    return inter / (uni - inter);
  };
  for (int B : {64, 128}) {
    const int64_t R = 2, G = 4, T = 64 * 37 + 11;
    auto iq = (torch::randn({R, G, T, 16}) * 1.5).to(torch::kBFloat16).to(torch::kFloat32);
    auto ik = (torch::randn({R, T, 16}) * 1.5).to(torch::kBFloat16).to(torch::kFloat32);
    for (auto agg : {rtp::kernels::BlockAggregate::MEAN, rtp::kernels::BlockAggregate::MAX})
      for (int S : {1, 2, 8, B}) {
        if (agg == rtp::kernels::BlockAggregate::MEAN && S == 1) continue;  // SelectionMatchesReference
        SparseConfig c;
        c.block_size = B;
        c.local_blocks = 2;
        c.query_sub_blocks = S;
        c.sub_block_aggregate = agg;
        const double whole = jaccard(select_blocks(iq, ik, c), select_blocks(iq.cuda(), ik.cuda(), c), 0);
        const int64_t q0 = 10 * B;  // a chunk: the queries from block 10 on, every key
        auto cq = iq.narrow(2, q0, T - q0).contiguous();
        const double chunk =
            jaccard(select_blocks(cq, ik, c, 0, q0), select_blocks(cq.cuda(), ik.cuda(), c, 0, q0), 10);
        std::printf("selection B=%d S=%d %s: Jaccard(cpu, gpu) = %.4f, chunk %.4f\n", B, S,
                    agg == rtp::kernels::BlockAggregate::MAX ? "max" : "mean", whole, chunk);
        EXPECT_GT(whole, 0.97);
        EXPECT_GT(chunk, 0.97);
      }
  }
}

namespace {

// The GPU decode against the CPU reference: no NaN, the retrieval selection within 2% (+2) of the reference's
// count, and the output error (relative to the float64 attention over the same keys) at most twice that of the naive
// bf16 decode (+1e-4).
void expect_decode_close(const DecodeRun& run, float top_p, int64_t L, const std::string& label) {
  const int ncpu = run.selected_cpu[0].item<int>(), ngpu = run.selected_gpu[0].item<int>();
  const double e = rel_err(run.out, run.exact), e_n = rel_err(run.naive, run.exact);
  std::printf("%s top_p=%.1f: err %.3e, naive bf16 err %.3e, selected cpu %d gpu %d of %ld%s%s\n", label.c_str(), top_p,
              e, e_n, ncpu, ngpu, L, run.sets_from_gpu_counts ? " (yardstick over the GPU's counts)" : "",
              run.splits_tie ? " (a count ends inside equal P)" : "");
  EXPECT_FALSE(run.out.isnan().any().item<bool>()) << label;
  EXPECT_NEAR(ngpu, ncpu, 0.02 * ncpu + 2) << label;
  EXPECT_LE(e, 2 * e_n + 1e-4) << label;
}

// expect_decode_close for fresh random inputs (one retrieval head) at top_p 1 and 0.9, with b* found by the last
// hist block and by the attend blocks, and with an fp32 and a bf16 (tensor-core passes) index.
void expect_decode_variants(int64_t Hq, int64_t G, int64_t D, int64_t cap, int64_t sink, int64_t window, int64_t L,
                            const std::vector<HeadKind>& kinds, const std::string& label) {
  SparseConfig c;
  c.sink = sink;
  c.window = window;
  for (float top_p : {1.0f, 0.9f})
    for (bool cut_in_attend : {false, true})
      for (bool bf16_index : {false, true}) {
        c.top_p = top_p;
        expect_decode_close(decode_cpu_and_gpu(random_decode_inputs(Hq, G, D, cap, sink + window, 1, 2.0, L), kinds, c,
                                               cut_in_attend, bf16_index),
                            top_p, L,
                            std::string(cut_in_attend ? "b* in attend: " : "") + (bf16_index ? "bf16 index: " : "") +
                                label);
      }
}

}  // namespace

TEST(SparseAttentionGpu, DecodeMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(3);
  for (int64_t D : {128, 64}) {
    const int64_t Hq = 8, G = 2, L = 5000 + 17, cap = 6000, sink = 4, window = 1000;  // 4 KV heads
    std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::DENSE, HeadKind::STREAMING};
    expect_decode_variants(Hq, G, D, cap, sink, window, L, kinds, "decode D=" + std::to_string(D));
  }
}

// A cache long enough that the dense head takes the split's largest blocks (1024 keys, decode_splits.h) with a partial
// last one, beside a retrieval head (256 candidates per block at this length) and two streaming heads.
TEST(SparseAttentionGpu, DecodeLongCacheMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(6);
  for (int64_t D : {128, 64}) {
    const int64_t G = 8, Hkv = 4, Hq = Hkv * G, L = 33000 + 7, cap = 33100, sink = 4, window = 2500;
    std::vector<HeadKind> kinds = {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::STREAMING};
    expect_decode_variants(Hq, G, D, cap, sink, window, L, kinds, "long cache D=" + std::to_string(D));
  }
}

// Three K/V tile stages (DecodeTuning::attend_tile_stages) change when the tiles are requested, not what is summed in
// which order: the same bits as two stages, for attend blocks of one tile (fewer than the tiles requested ahead), of
// many with a partial last one (1024-key dense blocks at 33K), dense, streaming and retrieval heads, D 128 and 64; and
// the output within the reference's bounds.
TEST(SparseAttentionGpu, DecodeThreeTileStagesEqualTwo) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(8);
  const int64_t G = 8, Hkv = 4, Hq = Hkv * G, sink = 4, window = 2500;
  const std::vector<HeadKind> kinds = {HeadKind::DENSE, HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::STREAMING};
  for (int64_t D : {128, 64})
    for (int64_t L : {int64_t{61}, int64_t{5000 + 17}, int64_t{33000 + 7}}) {
      const std::string label = "D=" + std::to_string(D) + " L=" + std::to_string(L);
      const DecodeInputs in = random_decode_inputs(Hq, G, D, L + 50, sink + window, 1, 2.0, L);
      SparseConfig c;
      c.sink = sink;
      c.window = window;
      c.top_p = 0.9f;
      c.decode_tuning.attend_tile_stages = 2;
      const DecodeRun two = decode_cpu_and_gpu(in, kinds, c);
      c.decode_tuning.attend_tile_stages = 3;
      const DecodeRun three = decode_cpu_and_gpu(in, kinds, c);
      expect_decode_close(three, c.top_p, L, "three tile stages, " + label);
      EXPECT_TRUE(torch::equal(three.selected_gpu, two.selected_gpu)) << label;
      EXPECT_TRUE(torch::equal(three.out, two.out))
          << label << ": max |three - two| " << (three.out - two.out).abs().max().item<float>();
    }
}

// The model's shape: G = 8 query heads per KV head (16 too), a window longer than one attend chunk, a KV length
// that is no multiple of the tiles, and more than one retrieval block (split-K with partial last chunks).
TEST(SparseAttentionGpu, DecodeMatchesReferenceWideGroups) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(4);
  for (int64_t G : {8, 16}) {
    for (int64_t D : {128, 64}) {
      const int64_t Hkv = 4, Hq = Hkv * G, L = 9000 + 13, cap = 9100, sink = 4, window = 2500;
      std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE, HeadKind::STREAMING};
      expect_decode_variants(Hq, G, D, cap, sink, window, L, kinds,
                             "decode G=" + std::to_string(G) + " D=" + std::to_string(D));
    }
  }
}

// Index keys constant over runs of 40 tokens: neighbouring tokens share a histogram bin (whole warps of them, and
// runs that straddle warps), the case the hist pass's warp aggregation exists for; also with hist blocks of another
// size than the stats blocks.
TEST(SparseAttentionGpu, DecodeClusteredScoresMatchReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(6);
  const int64_t G = 8, D = 128, Hkv = 4, Hq = Hkv * G, L = 9000 + 13, cap = 9100, sink = 4, window = 2500;
  std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE, HeadKind::STREAMING};
  DecodeInputs in = random_decode_inputs(Hq, G, D, cap, sink + window, 1, 2.0, L);
  auto runs = torch::floor_divide(torch::arange(cap), 40);
  in.index_k = in.index_k.index_select(1, runs).contiguous();
  for (int hist_tokens : {0, 1024, 300})
    for (float top_p : {0.9f, 0.5f})
      for (bool bf16_index : {false, true}) {
        SparseConfig c;
        c.sink = sink;
        c.window = window;
        c.top_p = top_p;
        c.decode_tuning.hist_tokens_per_block = hist_tokens;
        expect_decode_close(decode_cpu_and_gpu(in, kinds, c, true, bf16_index), top_p, L,
                            std::string(bf16_index ? "bf16 index, " : "") + "clustered index keys, hist blocks of " +
                                std::to_string(hist_tokens) + " tokens");
      }
}

// top_p = 1 keeps every token by definition. The v3 kernels cut the tail at D=128 (4944 of 5017 kept): the
// GPU's single-precision masses summed to slightly more than 1, so the cumulative histogram reached top_p before
// the last occupied bins. Sharp index scores (a wide range of P, many bins holding masses far below 1e-6) and
// several lengths (chunk counts, partial chunks) make such a cut likely; top_p = 0.999 also checks that the cut
// still tracks the reference when it lands in the tail.
TEST(SparseAttentionGpu, DecodeTopPOneSelectsEverything) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(5);
  const int64_t G = 4, D = 128, Hkv = 4, Hq = Hkv * G, sink = 4, window = 700;
  std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::RETRIEVAL};
  for (int64_t L : {300, 1000 + 3, 4096, 20000 + 11, 70000 + 1}) {
    for (float top_p : {1.0f, 0.999f})
    for (bool cut_in_attend : {false, true})
    for (bool bf16_index : {false, true}) {
      SparseConfig c;
      c.sink = sink;
      c.window = window;
      c.top_p = top_p;
      const int64_t cap = L + 5;
      const auto run =
          decode_cpu_and_gpu(random_decode_inputs(Hq, G, D, cap, sink + window, 2, 3.0, L), kinds, c, cut_in_attend,
                             bf16_index);
      const auto& out = run.out;
      const auto& sc = run.selected_cpu;
      const auto& sgc = run.selected_gpu;
      const double e = rel_err(out, run.exact), e_n = rel_err(run.naive, run.exact);
      for (int r = 0; r < 2; ++r) {
        const int ncpu = sc[r].item<int>(), ngpu = sgc[r].item<int>();
        std::printf("decode (%s%s) L=%ld top_p=%.3f head %d: err %.3e, naive bf16 err %.3e, selected cpu %d gpu %d of "
                    "%ld%s%s\n",
                    cut_in_attend ? "b* in attend" : "b* in hist", bf16_index ? ", bf16 index" : "", L, top_p, r, e,
                    e_n, ncpu, ngpu, L, run.sets_from_gpu_counts ? " (yardstick over the GPU's counts)" : "",
                    run.splits_tie ? " (a count ends inside equal P)" : "");
        if (top_p == 1.0f) {
          EXPECT_EQ(ncpu, L);
          EXPECT_EQ(ngpu, L);
        } else {
          // few tokens per tail bin: a token on a bin edge (float vs double log2) moves the count by a few
          EXPECT_NEAR(ngpu, ncpu, 0.05 * ncpu + 4);
        }
      }
      EXPECT_FALSE(out.isnan().any().item<bool>());
      EXPECT_LE(e, 2 * e_n + 1e-4);
    }
  }
}

// The decode yardstick's key sets and cache slots, checked on the CPU (no GPU needed): its top-p sets have exactly
// the CPU reference's counts (decode_cpu_and_gpu checks that), with float64 arithmetic instead of bf16 it reproduces
// the reference's output (float32 from float64 sums) to 1e-6, where one token too many or too few, or a wrong ring
// slot in a ring not yet full (a full ring's slots are all attended, in whatever order), moves the output by orders
// of magnitude more (both tried: 6e-3 and more); and the bf16 one's error is that of bf16 rounding. The GPU decode
// tests' shapes: rings not yet full and wrapped, every token forced, clustered index keys, top_p 1 to 0.5.
TEST(SparseAttentionGpu, DecodeYardstickMatchesCpuReference) {
  torch::manual_seed(9);
  using K = HeadKind;
  struct Case {
    int64_t G, D, L, cap, sink, window, nret;
    double index_scale;
    std::vector<HeadKind> kinds;
    bool clustered;
  };
  const std::vector<Case> cases = {
      {2, 128, 5017, 6000, 4, 1000, 1, 2.0, {K::STREAMING, K::RETRIEVAL, K::DENSE, K::STREAMING}, false},
      {8, 64, 9013, 9100, 4, 2500, 1, 2.0, {K::RETRIEVAL, K::STREAMING, K::DENSE, K::STREAMING}, false},
      {8, 128, 9013, 9100, 4, 2500, 1, 2.0, {K::RETRIEVAL, K::STREAMING, K::DENSE, K::STREAMING}, true},
      {4, 128, 100, 105, 4, 700, 2, 3.0, {K::STREAMING, K::RETRIEVAL, K::STREAMING, K::RETRIEVAL}, false},
      {4, 128, 300, 305, 4, 700, 2, 3.0, {K::STREAMING, K::RETRIEVAL, K::STREAMING, K::RETRIEVAL}, false},
      {4, 128, 1003, 1008, 4, 700, 2, 3.0, {K::STREAMING, K::RETRIEVAL, K::STREAMING, K::RETRIEVAL}, false}};
  int cuts = 0;
  for (const auto& cs : cases) {
    const int64_t Hq = int64_t(cs.kinds.size()) * cs.G;
    DecodeInputs in = random_decode_inputs(Hq, cs.G, cs.D, cs.cap, cs.sink + cs.window, cs.nret, cs.index_scale, cs.L);
    if (cs.clustered)
      in.index_k = in.index_k.index_select(1, torch::floor_divide(torch::arange(cs.cap), 40)).contiguous();
    for (float top_p : {1.0f, 0.999f, 0.9f, 0.5f})
      for (bool bf16_index : {false, true}) {
        SparseConfig c;
        c.sink = cs.sink;
        c.window = cs.window;
        c.top_p = top_p;
        const auto run = decode_cpu_and_gpu(in, cs.kinds, c, true, bf16_index, /*run_gpu=*/false);
        const auto exact = decode_yardstick(in, cs.kinds, c, run.selected, torch::kFloat64, torch::kCPU);
        const double e64 = rel_err(exact, run.ref), e_n = rel_err(run.naive, run.ref);
        std::string counts;
        for (int64_t r = 0; r < cs.nret; ++r) {
          const int n = run.selected_cpu[r].item<int>();
          counts += " " + std::to_string(n);
          if (top_p == 1.0f) {
            EXPECT_EQ(n, cs.L);
          }
          cuts += n < cs.L;
        }
        std::printf("yardstick G=%ld D=%ld L=%ld%s top_p=%.3f%s: float64 err %.3e, naive bf16 err %.3e, selected%s\n",
                    cs.G, cs.D, cs.L, cs.clustered ? " clustered" : "", top_p, bf16_index ? " bf16 index" : "", e64,
                    e_n, counts.c_str());
        EXPECT_LT(e64, 1e-6);
        EXPECT_GT(e_n, 1e-4);
        EXPECT_LT(e_n, 1e-2);
      }
  }
  EXPECT_GE(cuts, 20);  // the top-p < 1 runs cut (the L = 100 case forces every token)
}

// The decode kernels index the caches by the head kinds and step from one retrieval head's index rows to the next
// by k_full's capacity: caches with other head counts or head_dim, or an index_k of another capacity, would be read
// at the wrong rows or past their end, so the op refuses them (on the CPU too), naming what it expected.
TEST(SparseAttentionGpu, DecodeRefusesCachesOfTheWrongShape) {
  torch::manual_seed(10);
  const std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::STREAMING};
  SparseConfig c;
  c.sink = 4;
  c.window = 64;
  c.top_p = 0.9f;
  const DecodeInputs in = random_decode_inputs(8, 2, 64, 300, c.sink + c.window, 2, 2.0, 250);
  EXPECT_NO_THROW(sparse_decode(in, kinds, c));
  auto expect_refused = [&](const DecodeInputs& bad, const std::string& expected, const std::string& what) {
    try {
      sparse_decode(bad, kinds, c);
      ADD_FAILURE() << what << " was accepted";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << what << ": " << e.what();
    }
  };
  for (int64_t cap : {int64_t(250), int64_t(301)}) {
    DecodeInputs bad = in;
    bad.index_k = torch::randn({2, cap, 16});
    expect_refused(bad, "k_full's capacity (300)", "index_k of capacity " + std::to_string(cap));
  }
  DecodeInputs one_full = in;
  one_full.k_full = in.k_full.narrow(0, 0, 1).contiguous(), one_full.v_full = in.v_full.narrow(0, 0, 1).contiguous();
  expect_refused(one_full, "dense and retrieval KV heads (2)", "k_full of 1 head for 2 retrieval heads");
  DecodeInputs three_rings = in;
  three_rings.k_ring = torch::cat({in.k_ring, in.k_ring.narrow(0, 0, 1)}), three_rings.v_ring = three_rings.k_ring;
  expect_refused(three_rings, "streaming KV heads (2)", "ring caches of 3 heads for 2 streaming heads");
  DecodeInputs wide = in;
  wide.k_full = torch::randn({2, 300, 128}), wide.v_full = wide.k_full;
  expect_refused(wide, "head_dim (64)", "k_full of head_dim 128 for q of 64");
}

namespace {

// Rows of the lists for query blocks [b0, b0 + n).
BlockLists list_rows(const BlockLists& l, int64_t b0, int64_t n) {
  return {l.counts.narrow(1, b0, n).contiguous(), l.indices.narrow(1, b0, n).contiguous()};
}

}  // namespace

// Chunked prefill: queries [q0, q1) over keys [0, q1) (read in place from a larger cache-like tensor) against the
// CPU reference with the same offsets; the naive-bf16 yardstick uses the whole prompt's mask cut to the chunk.
TEST(SparseAttentionGpu, ChunkedPrefillMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(4);
  struct Case { int64_t T, D; int B; int64_t Hq, Hkv; };
  for (auto cs : {Case{1000, 128, 64, 8, 4}, Case{777, 64, 128, 6, 3}}) {
    std::vector<HeadKind> kinds;
    for (int64_t g = 0; g < cs.Hkv; ++g) kinds.push_back(g % 3 == 0 ? HeadKind::STREAMING : g % 3 == 1 ? HeadKind::RETRIEVAL : HeadKind::DENSE);
    const int64_t R = std::count(kinds.begin(), kinds.end(), HeadKind::RETRIEVAL), G = cs.Hq / cs.Hkv;
    SparseConfig c;
    c.sink = 5;
    c.window = 150;
    c.block_size = cs.B;
    c.top_p = 0.7f;
    const int64_t cap = cs.T + 3 * 64;  // the keys live in the first rows of a longer "cache"
    auto q = torch::randn({cs.Hq, cs.T, cs.D}).to(torch::kBFloat16);
    auto kcache = torch::randn({cs.Hkv, cap, cs.D}).to(torch::kBFloat16), vcache = torch::randn({cs.Hkv, cap, cs.D}).to(torch::kBFloat16);
    auto iq = torch::randn({R, G, cs.T, 16}) * 2, ik = torch::randn({R, cs.T, 16}) * 2;
    BlockLists lists = select_blocks(iq, ik, c);
    auto mask = build_mask(kinds, G, cs.T, c, lists);
    const int64_t B = cs.B;
    for (auto [q0, q1] : {std::pair<int64_t, int64_t>{0, 3 * B}, {3 * B, 3 * B + 1}, {4 * B, cs.T - 11}, {5 * B, cs.T}}) {
      const int64_t nqb = (q1 - q0 + B - 1) / B;
      BlockLists cl = list_rows(lists, q0 / B, nqb);
      auto qc = q.narrow(1, q0, q1 - q0);
      auto ref = sparse_attention(qc.to(torch::kFloat32), kcache.narrow(1, 0, q1).to(torch::kFloat32),
                                  vcache.narrow(1, 0, q1).to(torch::kFloat32), kinds, cl, c, q0);
      auto kg = kcache.cuda(), vg = vcache.cuda();
      auto m = mask.narrow(1, q0, q1 - q0).narrow(2, 0, q1).cuda();
      auto naive = naive_bf16(qc.cuda(), kg.narrow(1, 0, q1), vg.narrow(1, 0, q1), m);
      for (auto kern : prefill_kernels()) {
        c.prefill_kernel = kern;
        auto out = sparse_attention(qc.cuda(), kg.narrow(1, 0, q1), vg.narrow(1, 0, q1), kinds, cl, c, q0);
        torch::cuda::synchronize();
        ASSERT_FALSE(out.isnan().any().item<bool>());
        const double e_k = rel_err(out, ref), e_n = rel_err(naive, ref);
        std::printf("chunked prefill %s T=%ld D=%ld B=%d chunk [%ld, %ld): kernel err %.3e, naive bf16 err %.3e\n",
                    kernel_name(kern), cs.T, cs.D, cs.B, q0, q1, e_k, e_n);
        EXPECT_LE(e_k, 2 * e_n + 1e-4) << kernel_name(kern);
      }
    }
  }
}

// Streaming heads served from a ring: keys are [sinks, tokens from the chunk's first window on], the skipped
// positions in between; chunk starts at arbitrary positions, windows smaller and larger than the chunk.
TEST(SparseAttentionGpu, StreamingChunkWithSkippedKeysMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(5);
  const int64_t Hq = 8, Hkv = 2, T = 1500;
  std::vector<HeadKind> kinds(Hkv, HeadKind::STREAMING);
  for (int64_t D : {128, 64})
    for (int64_t window : {100, 700})
      for (auto [q0, q1] : {std::pair<int64_t, int64_t>{333, 901}, {1001, 1500}, {3, 70}}) {
        SparseConfig c;
        c.sink = 7;
        c.window = window;
        const int64_t S = std::min<int64_t>(c.sink, q1), h0 = std::max<int64_t>(S, q0 - window + 1), skip = h0 - S;
        auto pos = torch::cat({torch::arange(S), torch::arange(h0, q1)});  // token of each key row
        auto q = torch::randn({Hq, q1 - q0, D}).to(torch::kBFloat16);
        auto k = torch::randn({Hkv, T, D}).to(torch::kBFloat16), v = torch::randn({Hkv, T, D}).to(torch::kBFloat16);
        auto kr = k.index_select(1, pos), vr = v.index_select(1, pos);
        auto ref = sparse_attention(q.to(torch::kFloat32), kr.to(torch::kFloat32), vr.to(torch::kFloat32), kinds, {}, c,
                                    q0, skip);
        auto i = torch::arange(q0, q1).view({-1, 1}), j = pos.view({1, -1});
        auto m = ((j <= i) & ((j < c.sink) | (j > i - window))).unsqueeze(0).expand({Hq, -1, -1}).contiguous().cuda();
        auto naive = naive_bf16(q.cuda(), kr.cuda(), vr.cuda(), m);
        for (auto kern : prefill_kernels()) {
          c.prefill_kernel = kern;
          auto out = sparse_attention(q.cuda(), kr.cuda(), vr.cuda(), kinds, {}, c, q0, skip);
          torch::cuda::synchronize();
          ASSERT_FALSE(out.isnan().any().item<bool>());
          const double e_k = rel_err(out, ref), e_n = rel_err(naive, ref);
          std::printf("streaming chunk %s D=%ld window=%ld [%ld, %ld) skip %ld: kernel err %.3e, naive bf16 err %.3e\n",
                      kernel_name(kern), D, window, q0, q1, skip, e_k, e_n);
          EXPECT_LE(e_k, 2 * e_n + 1e-4) << kernel_name(kern);
        }
      }
}

// Selection for a chunk of query blocks on the GPU against the CPU reference with the same offset, and against
// the GPU's own one-shot lists of those blocks (the chunks end at a block boundary or at the prompt end).
TEST(SparseAttentionGpu, ChunkedSelectionMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(6);
  for (int B : {64, 128}) {
    const int64_t R = 2, G = 4, T = 64 * 37 + 11;
    SparseConfig c;
    c.block_size = B;
    c.local_blocks = 2;
    auto iq = (torch::randn({R, G, T, 16}) * 1.5).to(torch::kBFloat16).to(torch::kFloat32);
    auto ik = (torch::randn({R, T, 16}) * 1.5).to(torch::kBFloat16).to(torch::kFloat32);
    auto whole = select_blocks(iq.cuda(), ik.cuda(), c);
    auto wc = whole.counts.cpu(), wi = whole.indices.cpu();
    for (auto [q0, q1] : {std::pair<int64_t, int64_t>{int64_t(B) * 5, int64_t(B) * 11}, {int64_t(B) * 11, T}}) {
      auto cq = iq.narrow(2, q0, q1 - q0).contiguous(), ck = ik.narrow(1, 0, q1).contiguous();
      auto cpu = select_blocks(cq, ck, c, 0, q0);
      auto gpu = select_blocks(cq.cuda(), ck.cuda(), c, 0, q0);
      auto gc = gpu.counts.cpu(), gi = gpu.indices.cpu();
      const int64_t nqb = cpu.counts.size(1);
      ASSERT_EQ(gc.size(1), nqb);
      double inter = 0, uni = 0, inter_w = 0, uni_w = 0;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t m = 0; m < nqb; ++m) {
          const int64_t b = q0 / B + m;
          std::set<int> a, bb, w;
          for (int n = 0; n < cpu.counts[r][m].item<int>(); ++n) a.insert(cpu.indices[r][m][n].item<int>());
          for (int n = 0; n < wc[r][b].item<int>(); ++n) w.insert(wi[r][b][n].item<int>());
          int prev = -1;
          for (int n = 0; n < gc[r][m].item<int>(); ++n) {
            const int x = gi[r][m][n].item<int>();
            EXPECT_GT(x, prev);
            EXPECT_LE(x, b);
            prev = x;
            bb.insert(x);
          }
          EXPECT_TRUE(bb.count(0) && bb.count(int(b)) && bb.count(int(b) - 1)) << "block " << b;
          for (int x : a) inter += bb.count(x);
          uni += a.size() + bb.size();
          for (int x : w) inter_w += bb.count(x);
          uni_w += w.size() + bb.size();
        }
      const double jacc = inter / (uni - inter), jacc_w = inter_w / (uni_w - inter_w);
      std::printf("chunked selection B=%d [%ld, %ld): Jaccard(cpu, gpu) = %.4f, Jaccard(gpu one-shot, gpu chunk) = %.4f\n",
                  B, q0, q1, jacc, jacc_w);
      EXPECT_GT(jacc, 0.97);
      EXPECT_GT(jacc_w, 0.99);
    }
  }
}
