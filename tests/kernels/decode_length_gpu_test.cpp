// The CUDA decode with the KV length read from device memory (DecodeInputs::position), the form the decode stepper
// captures in its one graph per step: it must equal the call with the host length bit for bit, at any length up to the
// bound its grids were sized for, also when replayed from a CUDA graph captured at another length. And the decode
// kernel with every head DENSE (the dense KV cache's step attention) against a float64 reference, its error at most
// twice that of a naive bf16 attention. And the call right after the q/k/v projection that stores the token
// (caches_final_but_new_token: the other rows requested before the wait for that projection) against the same call
// once the projection has finished.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/kernels/sparse_attention.h"
#include "rtp/ops/linear_decode.h"
#include "rtp/ops/sparse_attention.h"

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

using rtp::kernels::HeadKind;
using namespace rtp::ops;

namespace {

bool have_gpu() { return rtp::kernels::built_with_cuda() && torch::cuda::is_available(); }

const torch::Device kCuda(torch::kCUDA, 0);

// Random bf16 inputs on the GPU: full caches for the DENSE and RETRIEVAL heads, rings for the STREAMING ones, a bf16
// index (the tensor-core passes the sparse cache takes) scaled so that the selection is sharp.
DecodeInputs random_inputs(const std::vector<HeadKind>& kinds, int64_t G, int64_t D, int64_t cap, int64_t ring) {
  int64_t nfull = 0, nstr = 0, nret = 0;
  for (auto k : kinds) (k == HeadKind::STREAMING ? nstr : nfull) += 1, nret += k == HeadKind::RETRIEVAL;
  const auto bf = torch::TensorOptions(torch::kBFloat16).device(kCuda);
  DecodeInputs in;
  in.q = torch::randn({static_cast<int64_t>(kinds.size()) * G, D}, bf);
  if (nfull) in.k_full = torch::randn({nfull, cap, D}, bf), in.v_full = torch::randn({nfull, cap, D}, bf);
  if (nstr) in.k_ring = torch::randn({nstr, ring, D}, bf), in.v_ring = torch::randn({nstr, ring, D}, bf);
  if (nret) in.index_q = torch::randn({nret, G, 16}, bf) * 2, in.index_k = torch::randn({nret, cap, 16}, bf) * 2;
  in.out = torch::empty({static_cast<int64_t>(kinds.size()) * G, D}, bf);
  in.selected = torch::zeros({std::max<int64_t>(nret, 1)}, torch::TensorOptions(torch::kInt32).device(kCuda));
  return in;
}

struct Result {
  torch::Tensor out, selected;
};

Result host_length_call(DecodeInputs in, const std::vector<HeadKind>& kinds, const SparseConfig& c, int64_t L) {
  in.kv_len = L;
  in.position = torch::Tensor();
  in.out = torch::empty_like(in.out);
  in.selected = torch::zeros_like(in.selected);
  auto o = sparse_decode(in, kinds, c);
  return {o.clone(), in.selected.clone()};
}

}  // namespace

// Mixed kinds (a retrieval, a dense and two streaming KV heads) at lengths on both sides of every split boundary, with
// the default splits and with tuned ones, b* found by the attend blocks and by the last hist block.
TEST(DecodeLengthOnDevice, EqualsTheHostLengthCallBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(11);
  const std::vector<HeadKind> kinds = {HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE, HeadKind::STREAMING};
  const std::vector<int64_t> lengths = {1, 2, 63, 64, 65, 700, 1025, 4096, 4097, 8193, 9001, 12289, 16385, 20000};
  const int64_t cap = 20000;
  for (const int64_t D : {128, 64})
    for (const int64_t G : {8, 2})
      for (const int variant : {0, 1, 2}) {
        SparseConfig c;
        c.sink = 4, c.window = 3000;
        if (variant == 1) c.decode_tuning.bstar_in_attend = false;
        if (variant == 2) {
          c.decode_tuning.index_tokens_per_block = 1024;
          c.decode_tuning.hist_tokens_per_block = 768;
          c.decode_tuning.dense_keys_per_block = 200;
          c.decode_tuning.retrieval_candidates_per_block = 512;
          c.decode_tuning.streaming_keys_per_block = 300;
        }
        auto in = random_inputs(kinds, G, D, cap, c.sink + c.window);
        auto dev = in;
        dev.kv_len = cap;
        dev.position = torch::zeros({1}, torch::TensorOptions(torch::kInt64).device(kCuda));
        int mismatches = 0;
        for (const int64_t L : lengths) {
          const auto ref = host_length_call(in, kinds, c, L);
          dev.position.fill_(L - 1);
          dev.selected.zero_();
          sparse_decode(dev, kinds, c);
          const bool same = torch::equal(dev.out, ref.out) && torch::equal(dev.selected, ref.selected);
          mismatches += !same;
          EXPECT_TRUE(same) << "D " << D << " G " << G << " variant " << variant << " length " << L << ": max |diff| "
                            << (dev.out.to(torch::kFloat32) - ref.out.to(torch::kFloat32)).abs().max().item<float>()
                            << ", selected " << dev.selected.cpu()[0].item<int>() << " vs "
                            << ref.selected.cpu()[0].item<int>();
        }
        std::printf("D %ld G %ld variant %d: %zu lengths up to %ld, %d differ from the host-length call\n", long(D),
                    long(G), variant, lengths.size(), long(cap), mismatches);
      }
}

// One call captured in a CUDA graph at one length, replayed after the position changed: the result of a fresh call
// with that length, every time (the decode stepper's one graph per step relies on it). The lengths straddle the
// retrieval attend blocks' steps (256 / 512 / 1024 candidates, decode_splits.h) and the index blocks' step at 49152
// keys (256 / 512 tokens), which the test above, up to 20000 keys, does not reach.
TEST(DecodeLengthOnDevice, OneCapturedCallServesEveryLength) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
#ifdef RTPURBO_WITH_CUDA
  torch::manual_seed(12);
  const std::vector<HeadKind> kinds = {HeadKind::STREAMING, HeadKind::RETRIEVAL, HeadKind::STREAMING, HeadKind::DENSE};
  const int64_t G = 8, D = 128, cap = 132000;
  SparseConfig c;
  c.sink = 4, c.window = 2048;
  auto in = random_inputs(kinds, G, D, cap, c.sink + c.window);
  auto dev = in;
  dev.kv_len = cap;
  dev.position = torch::full({1}, 5000, torch::TensorOptions(torch::kInt64).device(kCuda));
  sparse_decode(dev, kinds, c);  // outside the capture: kernel attributes set once
  torch::cuda::synchronize();
  at::cuda::CUDAGraph graph;
  {
    auto side = c10::cuda::getStreamFromPool(false, 0);
    c10::cuda::CUDAStreamGuard guard(side);
    graph.capture_begin();
    sparse_decode(dev, kinds, c);
    graph.capture_end();
    side.synchronize();
  }
  for (const int64_t L : {5001, 1, 100, 4096, 4097, 32768, 33000, 49152, 49153, 131072, 131073, 132000, 17}) {
    dev.position.fill_(L - 1);
    graph.replay();
    torch::cuda::synchronize();
    const auto ref = host_length_call(in, kinds, c, L);
    EXPECT_TRUE(torch::equal(dev.out, ref.out)) << "length " << L << ": max |diff| "
                                                << (dev.out.to(torch::kFloat32) - ref.out.to(torch::kFloat32)).abs().max().item<float>();
    EXPECT_TRUE(torch::equal(dev.selected, ref.selected)) << "length " << L;
  }
#endif
}

// Every head DENSE (KVCache::attend_token_on_device): against softmax(q k^T / sqrt(D)) v in float64, for group sizes
// 1 to 16, odd lengths and tails, with the host length and with the length on the device; the error at most twice
// that of a naive bf16 attention (scores and probabilities rounded to bf16).
TEST(DecodeLengthOnDevice, DenseHeadsMatchTheFloat64Reference) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(13);
  struct Case { int64_t Hkv, G, D; };
  for (const Case cs : {Case{4, 8, 128}, Case{8, 2, 128}, Case{8, 4, 128}, Case{2, 16, 64}, Case{3, 1, 64}})
    for (const int64_t L : {1, 37, 64, 65, 4095, 4097, 12289, 20011}) {
      const std::vector<HeadKind> kinds(static_cast<size_t>(cs.Hkv), HeadKind::DENSE);
      const int64_t cap = 20100;
      auto in = random_inputs(kinds, cs.G, cs.D, cap, 1);
      const auto q = in.q.to(torch::kFloat64).view({cs.Hkv, cs.G, cs.D});
      const auto k = in.k_full.narrow(1, 0, L), v = in.v_full.narrow(1, 0, L);
      const double scale = 1.0 / std::sqrt(static_cast<double>(cs.D));
      const auto p64 = torch::softmax(torch::matmul(q, k.to(torch::kFloat64).transpose(1, 2)) * scale, -1);
      const auto ref = torch::matmul(p64, v.to(torch::kFloat64)).view({cs.Hkv * cs.G, cs.D});
      const auto s16 = torch::matmul(in.q.view({cs.Hkv, cs.G, cs.D}), k.transpose(1, 2)) * scale;  // bf16
      const auto p16 = torch::softmax(s16.to(torch::kFloat32), -1).to(torch::kBFloat16);
      const auto naive = torch::matmul(p16, v).view({cs.Hkv * cs.G, cs.D});
      const double naive_err = (naive.to(torch::kFloat64) - ref).abs().max().item<double>();
      SparseConfig c;
      const auto host = host_length_call(in, kinds, c, L);
      auto dev = in;
      dev.kv_len = cap;
      dev.position = torch::full({1}, L - 1, torch::TensorOptions(torch::kInt64).device(kCuda));
      sparse_decode(dev, kinds, c);
      const double err = (host.out.to(torch::kFloat64) - ref).abs().max().item<double>();
      std::printf("dense decode Hkv %ld G %ld D %ld L %ld: max |err| %.3g, naive bf16 %.3g\n", long(cs.Hkv), long(cs.G),
                  long(cs.D), long(L), err, naive_err);
      EXPECT_LE(err, 2 * naive_err) << "Hkv " << cs.Hkv << " G " << cs.G << " D " << cs.D << " L " << L;
      EXPECT_TRUE(torch::equal(dev.out, host.out)) << "length on the device, L " << L;
    }
}

// The step's order: the q/k/v projection with the token store in its launch (its head epilogues write the new token's
// k/v rows, at the end of a ~30 us launch), then at once the decode with caches_final_but_new_token, whose attend blocks
// request every other row while the projection still runs. Its result must equal the same call made after a
// synchronize, for dense caches (the new row in the first, second or a later tile of its block) and rings (the new
// token in the sinks, before and after the ring wraps). The new rows are poisoned before each projection, so a read
// of one before the store is seen. A broken promise (the projection storing a row the call does not expect as new)
// must differ: the test's own check that the early reads do race with the projection.
TEST(DecodeLengthOnDevice, EarlyCacheReadsAfterTheProjectionsTokenStore) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA): tested on the GPU machine";
  torch::manual_seed(14);
  const int64_t Hkv = 4, G = 8, Hq = Hkv * G, D = 128, hidden = 8192, cap = 6000, sink = 4, window = 200;
  const auto bf = torch::TensorOptions(torch::kBFloat16).device(kCuda);
  const auto i64 = torch::TensorOptions(torch::kInt64).device(kCuda);
  auto x = torch::randn({1, 1, hidden}, bf);
  auto w = torch::randn({(Hq + 2 * Hkv) * D, hidden}, bf) / std::sqrt(static_cast<double>(hidden));
  auto qw = (torch::rand({D}) + 0.5).to(bf), kw = (torch::rand({D}) + 0.5).to(bf);
  auto angle = torch::rand({1, D / 2}) * 100;
  auto cos = torch::cat({angle.cos(), angle.cos()}, -1).to(kCuda), sin = torch::cat({angle.sin(), angle.sin()}, -1).to(kCuda);
  auto counts = torch::zeros({Hq + 2 * Hkv}, torch::TensorOptions(torch::kInt32).device(kCuda));
  SparseConfig c;
  c.sink = sink, c.window = window;
  int broken_differ = 0, broken_runs = 0;
  for (const bool ring : {false, true}) {
    const int64_t rows = ring ? sink + window : cap;
    auto k_cache = torch::randn({1, Hkv, rows, D}, bf), v_cache = torch::randn({1, Hkv, rows, D}, bf);
    const std::vector<HeadKind> kinds(Hkv, ring ? HeadKind::STREAMING : HeadKind::DENSE);
    // Dense: 128 keys per block at 4K (the new row in tile 0 or 1), 192 from 4097 to 6144 (tile 0, 1 or 2).
    const std::vector<int64_t> positions = ring ? std::vector<int64_t>{0, 3, 150, 203, 204, 500, 5000}
                                                : std::vector<int64_t>{0, 63, 64, 4095, 4991, 5092, 5142, 5999};
    for (const int64_t t : positions)
      for (const bool broken : {false, true}) {
        const int64_t slot = ring && t >= sink ? sink + (t - sink) % window : t;
        if (broken && slot == 0) continue;
        // Broken: the store writes another row the call reads (the call still expects row `slot` as the new one).
        const int64_t written = broken ? slot - 1 : slot;
        k_cache.select(2, written).fill_(30.f), v_cache.select(2, written).fill_(-1000.f);
        auto store_at = torch::full({1}, written, i64);
        QkvTokenStore store{k_cache, v_cache, store_at};
        auto position = torch::full({1}, t, i64);
        DecodeInputs d;
        d.kv_len = cap, d.position = position;
        (ring ? d.k_ring : d.k_full) = k_cache[0], (ring ? d.v_ring : d.v_full) = v_cache[0];
        d.out = torch::empty({Hq, D}, bf);
        d.selected = torch::zeros({1}, torch::TensorOptions(torch::kInt32).device(kCuda));
        d.caches_final_but_new_token = true;
        torch::cuda::synchronize();
        auto qkv = linear_decode_qk_norm_rope(x, w, qw, kw, cos, sin, Hq, Hkv, 1e-6, counts,
                                              rtp::kernels::GemvLayout::Auto, store);
        d.q = qkv.q_roped[0][0];  // [Hq, D], written by the projection
        sparse_decode(d, kinds, c);
        torch::cuda::synchronize();
        auto after = d;
        after.out = torch::empty_like(d.out);
        after.caches_final_but_new_token = false;
        sparse_decode(after, kinds, c);
        const bool same = torch::equal(d.out, after.out);
        if (broken) {
          broken_runs += 1, broken_differ += !same;
        } else {
          EXPECT_TRUE(same) << (ring ? "ring" : "dense") << " position " << t << ": max |diff| "
                            << (d.out.to(torch::kFloat32) - after.out.to(torch::kFloat32)).abs().max().item<float>();
        }
      }
  }
  std::printf("a broken promise (another row stored) differed in %d of %d calls\n", broken_differ, broken_runs);
  EXPECT_GT(broken_differ, broken_runs / 2) << "the early reads did not overlap the projection: the test sees nothing";
}
