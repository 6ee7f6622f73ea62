// The CUDA decode with the KV length read from device memory (DecodeInputs::position), the form the decode stepper
// captures in its one graph per step: it must equal the call with the host length bit for bit, at any length up to the
// bound its grids were sized for, also when replayed from a CUDA graph captured at another length. And the decode
// kernel with every head DENSE (the dense KV cache's step attention) against a float64 reference, its error at most
// twice that of a naive bf16 attention.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "rtp/kernels/build_info.h"
#include "rtp/kernels/sparse_attention.h"
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
