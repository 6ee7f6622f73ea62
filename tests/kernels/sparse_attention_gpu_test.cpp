// CUDA kernels against the CPU references on random inputs and awkward sizes. The kernel's error against an
// fp64-accumulated reference must be at most twice that of a naive bf16 implementation.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/ops/sparse_attention.h"

using rtp::kernels::HeadKind;
using namespace rtp::ops;

namespace {

bool have_gpu() { return rtp::kernels::built_with_cuda() && torch::cuda::is_available(); }

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

}  // namespace

TEST(SparseAttentionGpu, PrefillMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(1);
  struct Case { int64_t T, D; int B; int64_t Hq, Hkv; };
  for (auto cs : {Case{1000, 128, 64, 8, 4}, Case{333, 64, 64, 4, 2}, Case{700, 128, 128, 6, 3}, Case{130, 64, 128, 2, 2},
                  Case{64 * 5, 128, 64, 12, 4}}) {
    std::vector<HeadKind> kinds;
    for (int64_t g = 0; g < cs.Hkv; ++g) kinds.push_back(g % 3 == 0 ? HeadKind::STREAMING : g % 3 == 1 ? HeadKind::RETRIEVAL : HeadKind::DENSE);
    const int64_t R = std::count(kinds.begin(), kinds.end(), HeadKind::RETRIEVAL), G = cs.Hq / cs.Hkv;
    SparseConfig c;
    c.sink = 5;
    c.window = 150;
    c.block_size = cs.B;
    c.top_p = 0.7f;
    auto q = torch::randn({cs.Hq, cs.T, cs.D}).to(torch::kBFloat16), k = torch::randn({cs.Hkv, cs.T, cs.D}).to(torch::kBFloat16),
         v = torch::randn({cs.Hkv, cs.T, cs.D}).to(torch::kBFloat16);
    auto iq = torch::randn({R, G, cs.T, 16}) * 2, ik = torch::randn({R, cs.T, 16}) * 2;
    BlockLists lists = select_blocks(iq, ik, c);  // CPU lists shared by both paths
    auto ref = sparse_attention(q.to(torch::kFloat32), k.to(torch::kFloat32), v.to(torch::kFloat32), kinds, lists, c);
    auto out = sparse_attention(q.cuda(), k.cuda(), v.cuda(), kinds, lists, c);
    torch::cuda::synchronize();
    ASSERT_FALSE(out.isnan().any().item<bool>());
    auto mask = build_mask(kinds, G, cs.T, c, lists).cuda();
    auto naive = naive_bf16(q.cuda(), k.cuda(), v.cuda(), mask);
    const double e_k = rel_err(out, ref), e_n = rel_err(naive, ref);
    std::printf("prefill T=%ld D=%ld B=%d: kernel err %.3e, naive bf16 err %.3e\n", cs.T, cs.D, cs.B, e_k, e_n);
    EXPECT_LE(e_k, 2 * e_n + 1e-4);
  }
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
  }
}

TEST(SparseAttentionGpu, DecodeMatchesReference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  torch::manual_seed(3);
  for (int64_t D : {128, 64}) {
    const int64_t Hq = 8, Hkv = 4, G = 2, L = 5000 + 17, cap = 6000, sink = 4, window = 1000;
    std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::DENSE, HeadKind::STREAMING};
    SparseConfig c;
    c.sink = sink;
    c.window = window;
    for (float top_p : {1.0f, 0.9f}) {
      c.top_p = top_p;
      DecodeInputs in;
      in.q = torch::randn({Hq, D}).to(torch::kBFloat16).to(torch::kFloat32);
      in.k_full = torch::randn({2, cap, D}).to(torch::kBFloat16).to(torch::kFloat32);
      in.v_full = torch::randn({2, cap, D}).to(torch::kBFloat16).to(torch::kFloat32);
      in.k_ring = torch::randn({2, sink + window, D}).to(torch::kBFloat16).to(torch::kFloat32);
      in.v_ring = torch::randn({2, sink + window, D}).to(torch::kBFloat16).to(torch::kFloat32);
      in.index_q = torch::randn({1, G, 16}).to(torch::kBFloat16).to(torch::kFloat32) * 2;
      in.index_k = torch::randn({1, cap, 16}).to(torch::kBFloat16).to(torch::kFloat32) * 2;
      in.kv_len = L;
      torch::Tensor sc, sg;
      auto ref = sparse_decode(in, kinds, c, &sc);
      DecodeInputs ig = in;
      for (auto* t : {&ig.q, &ig.k_full, &ig.v_full, &ig.k_ring, &ig.v_ring, &ig.index_q, &ig.index_k}) *t = t->cuda();
      auto out = sparse_decode(ig, kinds, c, &sg);
      torch::cuda::synchronize();
      const int ncpu = sc[0].item<int>(), ngpu = sg.cpu()[0].item<int>();
      // naive bf16 error for the dense head (head group 2) as the yardstick
      const double e = rel_err(out.cpu(), ref);
      std::printf("decode D=%ld top_p=%.1f: err %.3e, selected cpu %d gpu %d of %ld\n", D, top_p, e, ncpu, ngpu, L);
      EXPECT_FALSE(out.isnan().any().item<bool>());
      EXPECT_NEAR(ngpu, ncpu, 0.02 * ncpu + 2);
      EXPECT_LT(e, top_p == 1.0f ? 8e-3 : 3e-2);
    }
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
      SparseConfig c;
      c.sink = sink;
      c.window = window;
      for (float top_p : {1.0f, 0.9f}) {
        c.top_p = top_p;
        DecodeInputs in;
        in.q = torch::randn({Hq, D}).to(torch::kBFloat16).to(torch::kFloat32);
        in.k_full = torch::randn({2, cap, D}).to(torch::kBFloat16).to(torch::kFloat32);
        in.v_full = torch::randn({2, cap, D}).to(torch::kBFloat16).to(torch::kFloat32);
        in.k_ring = torch::randn({2, sink + window, D}).to(torch::kBFloat16).to(torch::kFloat32);
        in.v_ring = torch::randn({2, sink + window, D}).to(torch::kBFloat16).to(torch::kFloat32);
        in.index_q = torch::randn({1, G, 16}).to(torch::kBFloat16).to(torch::kFloat32) * 2;
        in.index_k = torch::randn({1, cap, 16}).to(torch::kBFloat16).to(torch::kFloat32) * 2;
        in.kv_len = L;
        torch::Tensor sc, sg;
        auto ref = sparse_decode(in, kinds, c, &sc);
        DecodeInputs ig = in;
        for (auto* t : {&ig.q, &ig.k_full, &ig.v_full, &ig.k_ring, &ig.v_ring, &ig.index_q, &ig.index_k}) *t = t->cuda();
        auto out = sparse_decode(ig, kinds, c, &sg);
        torch::cuda::synchronize();
        const int ncpu = sc[0].item<int>(), ngpu = sg.cpu()[0].item<int>();
        const double e = rel_err(out.cpu(), ref);
        std::printf("decode G=%ld D=%ld top_p=%.1f: err %.3e, selected cpu %d gpu %d of %ld\n", G, D, top_p, e, ncpu,
                    ngpu, L);
        EXPECT_FALSE(out.isnan().any().item<bool>());
        EXPECT_NEAR(ngpu, ncpu, 0.02 * ncpu + 2);
        EXPECT_LT(e, top_p == 1.0f ? 8e-3 : 3e-2);
      }
    }
  }
}
