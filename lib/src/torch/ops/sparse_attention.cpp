#include "rtp/ops/sparse_attention.h"

#include <algorithm>
#include <string>

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/kernels/sparse_attention.h"
#include "device_launch.h"

#ifdef RTPURBO_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::ops {
namespace k = rtp::kernels;

namespace {

void check_3d(const torch::Tensor& t, const char* name) {
  RTP_CHECK(t.defined() && t.dim() == 3, name, ": expected a 3-d tensor, found ",
            t.defined() ? t.dim() : -1, " dims");
}

bool on_cuda(const torch::Tensor& t, const char* op) {
  if (!t.is_cuda()) return false;
#ifndef RTPURBO_WITH_CUDA
  RTP_THROW(op, ": a CUDA tensor was given but this build has no CUDA kernels (built without CUDA)");
#endif
  return true;
}

#ifdef RTPURBO_WITH_CUDA
void check_cuda(cudaError_t e, const char* op) {
  RTP_CHECK(e == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(e));
}
#endif

// Contiguous, and on the GPU starting at a 16-byte aligned address (the kernels' vector, cp.async and TMA loads):
// a view into a larger buffer may be contiguous yet start anywhere, and contiguous() returns it unchanged.
bool is_contiguous_aligned(const torch::Tensor& t) {
  return t.is_contiguous() && (!t.is_cuda() || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0);
}

torch::Tensor contiguous_aligned(const torch::Tensor& t) {
  return is_contiguous_aligned(t) ? t : t.clone(torch::MemoryFormat::Contiguous);
}

// The kernels read counts[r, m] entries of list (r, m) and take each as a key block: the CPU reference marks it in a
// table of the call's blocks, the CUDA kernels load its key rows, and visit the listed tiles in order (the fully
// visible ones a prefix). On the CPU a count outside [0, max_blocks] or an entry outside [0, n_blocks) is read or
// written past an end; anywhere an entry out of order or repeated is attended wrongly.
// Lists on the host (the CPU path, or host lists given with CUDA q/k/v) are held to the contract here
// (sparse_attention_params.h: ascending, unique, each at most the list's query block b0 + m). Lists already on the GPU
// would need a device-to-host copy and a synchronisation per call: there they are trusted to come from select_blocks,
// and the kernels clamp counts and entries into range (prefill_tiles.h), so that a broken list gives a wrong result,
// not a read outside k and v.
void check_block_lists_on_host(const torch::Tensor& counts, const torch::Tensor& indices, int64_t b0) {
  const auto c = counts.accessor<int32_t, 2>();
  const auto ix = indices.accessor<int32_t, 3>();
  const int64_t max_blocks = indices.size(2);
  for (int64_t r = 0; r < counts.size(0); ++r)
    for (int64_t m = 0; m < counts.size(1); ++m) {
      const int64_t n = c[r][m], b = b0 + m;
      RTP_CHECK(n >= 0 && n <= max_blocks, "sparse_attention: counts[", r, ", ", m, "] must be in [0, max_blocks = ",
                max_blocks, "], found ", n);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t lo = i > 0 ? int64_t(ix[r][m][i - 1]) + 1 : 0, blk = ix[r][m][i];
        RTP_CHECK(blk >= lo && blk <= b, "sparse_attention: indices[", r, ", ", m, "] (query block ", b,
                  ") must list ascending, unique key blocks in [0, ", b, "], found ", blk, " at entry ", i,
                  i > 0 ? " after " + std::to_string(lo - 1) : std::string());
      }
    }
}

}  // namespace

k::BlockAggregate parse_block_aggregate(const std::string& name) {
  if (name == "mean") return k::BlockAggregate::MEAN;
  if (name == "max") return k::BlockAggregate::MAX;
  throw Error("sub_block_aggregate must be \"mean\" or \"max\", found \"" + name + "\"");
}

BlockLists select_blocks(const torch::Tensor& index_q, const torch::Tensor& index_k, const SparseConfig& cfg,
                         int64_t max_blocks, int64_t q_offset) {
  RTP_CHECK(index_q.dim() == 4 && index_q.size(3) == k::kIndexDim, "select_blocks: index_q must be [R, G, Tq, 16], found ",
            index_q.sizes());
  check_3d(index_k, "select_blocks: index_k");
  RTP_CHECK(k::block_size_supported(cfg.block_size), "select_blocks: block_size must be 64 or 128, found ",
            cfg.block_size);  // before the block counts below divide by it
  RTP_CHECK(index_k.size(0) == index_q.size(0) && index_k.size(1) == q_offset + index_q.size(2) &&
                index_k.size(2) == k::kIndexDim,
            "select_blocks: index_k must be [R, q_offset + Tq, 16] = [", index_q.size(0), ", ", q_offset + index_q.size(2),
            ", 16] for index_q ", index_q.sizes(), " and q_offset ", q_offset, ", found ", index_k.sizes());
  RTP_CHECK(index_q.device() == index_k.device(), "select_blocks: index_q and index_k on different devices");
  const int64_t T = index_k.size(1), nb = (T + cfg.block_size - 1) / cfg.block_size;
  const int64_t nqb = (index_q.size(2) + cfg.block_size - 1) / cfg.block_size;
  // n_blocks never cuts; short sequences (one or two blocks) still need room for the forced blocks.
  if (max_blocks <= 0) max_blocks = std::max<int64_t>(nb, cfg.local_blocks + 1);
  const bool cuda = on_cuda(index_q, "select_blocks");
  torch::Tensor iq = contiguous_aligned(index_q), ik = contiguous_aligned(index_k);
  if (!cuda) iq = iq.to(torch::kFloat32), ik = ik.to(torch::kFloat32);
  else if (iq.scalar_type() != torch::kBFloat16) iq = iq.to(torch::kFloat32), ik = ik.to(torch::kFloat32);
  else ik = ik.to(torch::kBFloat16);
  auto opts = torch::TensorOptions().dtype(torch::kInt32).device(index_q.device());
  BlockLists out{torch::zeros({index_q.size(0), nqb}, opts), torch::zeros({index_q.size(0), nqb, max_blocks}, opts)};
  k::BlockSelectParams p;
  p.index_q = iq.data_ptr();
  p.index_k = ik.data_ptr();
  p.index_dtype = iq.scalar_type() == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  p.counts = out.counts.data_ptr<int32_t>();
  p.indices = out.indices.data_ptr<int32_t>();
  p.num_ret_heads = int(index_q.size(0));
  p.group_size = int(index_q.size(1));
  p.seq_len = T;
  p.block_size = cfg.block_size;
  p.local_blocks = cfg.local_blocks;
  p.max_blocks = int(max_blocks);
  p.top_p = cfg.top_p;
  p.q_offset = q_offset;
  p.query_sub_blocks = cfg.query_sub_blocks;
  p.sub_block_aggregate = cfg.sub_block_aggregate;
  const int S = cfg.query_sub_blocks;
  RTP_CHECK(S >= 1 && S <= cfg.block_size && (S & (S - 1)) == 0, "select_blocks: query_sub_blocks must be a power of ",
            "two in [1, block_size = ", cfg.block_size, "], found ", S);
  const char* err = k::check_block_select_params(p);
  RTP_CHECK(!*err, "select_blocks: ", err);
  if (cuda) {
#ifdef RTPURBO_WITH_CUDA
    const DeviceLaunch launch(index_q.device());
    // Scratch from the caching allocator (see select_blocks_workspace_bytes).
    const auto ws = torch::empty({static_cast<int64_t>(k::select_blocks_workspace_bytes(p))},
                                 torch::TensorOptions(torch::kUInt8).device(index_q.device()));
    p.workspace = ws.data_ptr(), p.workspace_bytes = static_cast<size_t>(ws.numel());
    check_cuda(k::select_blocks_cuda(p, launch.stream()), "select_blocks");
#endif
  } else {
    k::select_blocks_cpu(p);
  }
  return out;
}

torch::Tensor sparse_attention(const torch::Tensor& q, const torch::Tensor& kk, const torch::Tensor& v,
                               const std::vector<k::HeadKind>& kinds, const BlockLists& lists,
                               const SparseConfig& cfg, int64_t q_offset, int64_t stream_key_skip,
                               const QueryGroupsInto* into) {
  check_3d(q, "sparse_attention: q");
  check_3d(kk, "sparse_attention: k");
  check_3d(v, "sparse_attention: v");
  RTP_CHECK(kk.sizes() == v.sizes(), "sparse_attention: k and v shapes differ: ", kk.sizes(), " vs ", v.sizes());
  RTP_CHECK(q_offset >= 0 && stream_key_skip >= 0, "sparse_attention: q_offset and stream_key_skip must be >= 0, found ",
            q_offset, " and ", stream_key_skip);
  RTP_CHECK(q.size(2) == kk.size(2) && q_offset + q.size(1) - stream_key_skip == kk.size(1), "sparse_attention: q ",
            q.sizes(), " at q_offset ", q_offset, " needs k with q_offset + Tq - stream_key_skip = ",
            q_offset + q.size(1) - stream_key_skip, " rows of ", q.size(2), ", found k ", kk.sizes());
  RTP_CHECK(int64_t(kinds.size()) == kk.size(0), "sparse_attention: expected one kind per KV head (", kk.size(0),
            "), found ", kinds.size());
  RTP_CHECK(k::block_size_supported(cfg.block_size), "sparse_attention: block_size must be 64 or 128, found ",
            cfg.block_size);  // before the lists' shape below divides by it
  const bool cuda = on_cuda(q, "sparse_attention");
  RTP_CHECK(kk.device() == q.device() && v.device() == q.device(), "sparse_attention: q/k/v on different devices");
  const auto dt = cuda ? torch::kBFloat16 : torch::kFloat32;
  // Views are read in place (a chunk reads the first T rows of a cache sized for the whole sequence: copying
  // them per chunk would cost O(T^2 / chunk)); the kernel needs unit d-stride and, on the GPU, 16-byte rows
  // starting at a 16-byte aligned address (the vector and TMA loads).
  auto prep = [&](const torch::Tensor& t) {
    torch::Tensor x = t.to(dt);
    const bool ok = x.stride(2) == 1 && x.stride(0) > 0 && x.stride(1) > 0 &&
                    (!cuda || (x.stride(0) % 8 == 0 && x.stride(1) % 8 == 0 &&
                               reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0));
    return ok ? x : x.clone(torch::MemoryFormat::Contiguous);  // contiguous() would keep a misaligned start
  };
  torch::Tensor qc = prep(q), kc = prep(kk), vc = prep(v);
  int64_t attended_q_heads = q.size(0);
  if (into) {
    const int64_t G = into->group_size, Hkv = kk.size(0);
    RTP_CHECK(G >= 1 && q.size(0) % G == 0, "sparse_attention: group_size ", G, " does not divide the ", q.size(0),
              " query heads of q");
    RTP_CHECK(int64_t(into->group.size()) == Hkv, "sparse_attention: expected one query group per KV head (", Hkv,
              "), found ", into->group.size());
    for (int32_t g : into->group)
      RTP_CHECK(g >= 0 && g < q.size(0) / G, "sparse_attention: query group ", g, " is not in [0, ", q.size(0) / G,
                ") (q has ", q.size(0), " heads in groups of ", G, ")");
    RTP_CHECK(into->out.defined() && into->out.sizes() == q.sizes() && into->out.device() == q.device(),
              "sparse_attention: out must be ", q.sizes(), " on ", q.device(), ", found ",
              into->out.defined() ? into->out.sizes() : torch::IntArrayRef{});
    attended_q_heads = Hkv * G;
  }
  // Written in place when out already has the kernel's dtype and layout; else through a copy.
  torch::Tensor o = into ? prep(into->out) : torch::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  const int nret = int(std::count(kinds.begin(), kinds.end(), k::HeadKind::RETRIEVAL));
  k::SparseAttentionParams p;
  p.q = qc.data_ptr();
  p.k = kc.data_ptr();
  p.v = vc.data_ptr();
  p.o = o.data_ptr();
  p.dtype = cuda ? k::DType::BF16 : k::DType::F32;
  p.q_head_stride = qc.stride(0), p.q_row_stride = qc.stride(1);
  p.k_head_stride = kc.stride(0), p.k_row_stride = kc.stride(1);
  p.v_head_stride = vc.stride(0), p.v_row_stride = vc.stride(1);
  p.o_head_stride = o.stride(0), p.o_row_stride = o.stride(1);
  p.q_group = into ? into->group.data() : nullptr;
  p.num_q_heads = int(attended_q_heads);
  p.num_kv_heads = int(kk.size(0));
  p.seq_len = q_offset + q.size(1);
  p.q_offset = q_offset;
  p.stream_key_skip = stream_key_skip;
  p.prefill_kernel = cfg.prefill_kernel;
  p.head_dim = int(q.size(2));
  p.head_kind = kinds.data();
  p.sink = cfg.sink;
  p.window = cfg.window;
  p.block_size = cfg.block_size;
  torch::Tensor counts, indices, host_counts, host_indices;
  if (nret > 0) {
    const int64_t nb = (q.size(1) + cfg.block_size - 1) / cfg.block_size;  // the call's query blocks
    RTP_CHECK(lists.counts.defined() && lists.counts.dim() == 2 && lists.counts.size(0) == nret &&
                  lists.counts.size(1) == nb,
              "sparse_attention: counts must be [", nret, ", ", nb, "], found ",
              lists.counts.defined() ? lists.counts.sizes() : torch::IntArrayRef{});
    RTP_CHECK(lists.indices.defined() && lists.indices.dim() == 3 && lists.indices.size(0) == nret &&
                  lists.indices.size(1) == nb,
              "sparse_attention: indices must be [", nret, ", ", nb, ", max_blocks], found ",
              lists.indices.defined() ? lists.indices.sizes() : torch::IntArrayRef{});
    const auto c32 = lists.counts.to(torch::kInt32).contiguous(), i32 = lists.indices.to(torch::kInt32).contiguous();
    counts = c32.to(q.device()), indices = i32.to(q.device());
    // Lists that are (or arrive) on the host are checked there: no device-to-host copy (check_block_lists_on_host).
    if (counts.is_cpu()) host_counts = counts, host_indices = indices;
    else if (c32.is_cpu() && i32.is_cpu()) host_counts = c32, host_indices = i32;
    p.block_counts = counts.data_ptr<int32_t>();
    p.block_indices = indices.data_ptr<int32_t>();
    p.max_blocks = int(indices.size(2));
  }
  const char* err = k::check_sparse_attention_params(p, cuda);
  RTP_CHECK(!*err, "sparse_attention: ", err);
  if (host_counts.defined()) check_block_lists_on_host(host_counts, host_indices, q_offset / cfg.block_size);
  if (cuda) {
#ifdef RTPURBO_WITH_CUDA
    const DeviceLaunch launch(q.device());
    check_cuda(k::sparse_attention_cuda(p, launch.stream()), "sparse_attention");
#endif
  } else {
    k::sparse_attention_cpu(p);
  }
  if (!into) return o;
  if (!o.is_same(into->out)) into->out.copy_(o);
  return into->out;
}

bool sparse_decode_gpu_takes(torch::ScalarType dtype, int64_t head_dim, int64_t query_heads, int64_t kv_heads) {
  return k::built_with_cuda() && dtype == torch::kBFloat16 && (head_dim == 64 || head_dim == 128) && kv_heads >= 1 &&
         kv_heads <= k::kMaxKvHeads && query_heads % kv_heads == 0 && query_heads / kv_heads <= 16;
}

torch::Tensor sparse_decode(const DecodeInputs& in, const std::vector<k::HeadKind>& kinds, const SparseConfig& cfg,
                            torch::Tensor* selected_count) {
  RTP_CHECK(in.q.defined() && in.q.dim() == 2, "sparse_decode: q must be [Hq, D]");
  const bool cuda = on_cuda(in.q, "sparse_decode");
  const auto dt = cuda ? torch::kBFloat16 : torch::kFloat32;
  auto prep = [&](const torch::Tensor& t, torch::ScalarType s) {
    return t.defined() ? contiguous_aligned(t.to(in.q.device(), s)) : t;
  };
  const auto idt = cuda && in.index_q.defined() && in.index_q.scalar_type() == torch::kBFloat16 ? torch::kBFloat16
                                                                                               : torch::kFloat32;
  torch::Tensor q = prep(in.q, dt), kf = prep(in.k_full, dt), vf = prep(in.v_full, dt), kr = prep(in.k_ring, dt),
                vr = prep(in.v_ring, dt), iq = prep(in.index_q, idt), ik = prep(in.index_k, idt);
  const bool out_in_place = in.out.defined() && in.out.scalar_type() == dt && in.out.device() == q.device() &&
                            in.out.sizes() == q.sizes() && is_contiguous_aligned(in.out);
  RTP_CHECK(!in.out.defined() || in.out.sizes() == q.sizes(), "sparse_decode: out must be [Hq, D] like q, found ",
            in.out.sizes());
  torch::Tensor o = out_in_place ? in.out : torch::empty_like(q);
  const int nret = int(std::count(kinds.begin(), kinds.end(), k::HeadKind::RETRIEVAL));
  const int nstr = int(std::count(kinds.begin(), kinds.end(), k::HeadKind::STREAMING));
  const int nfull = int(kinds.size()) - nstr;
  torch::Tensor sel;
  if (in.selected.defined()) {
    RTP_CHECK(in.selected.scalar_type() == torch::kInt32 && in.selected.device() == q.device() &&
                  in.selected.is_contiguous() && in.selected.numel() >= std::max(nret, 1),
              "sparse_decode: selected must be int32 [>= ", std::max(nret, 1), "] on q's device, found ",
              in.selected.scalar_type(), " ", in.selected.sizes());
    sel = in.selected;
  } else {
    // The kernels set each retrieval head's count (CUDA: the first index pass resets it); without retrieval heads
    // nothing writes it.
    const auto opt = torch::TensorOptions().dtype(torch::kInt32).device(q.device());
    sel = nret > 0 ? torch::empty({nret}, opt) : torch::zeros({1}, opt);
  }
  k::SparseDecodeParams p;
  p.q = q.data_ptr();
  p.o = o.data_ptr();
  p.dtype = cuda ? k::DType::BF16 : k::DType::F32;
  if (kf.defined()) {
    RTP_CHECK(kf.dim() == 3 && vf.sizes() == kf.sizes() && kf.size(0) == nfull && kf.size(2) == q.size(1),
              "sparse_decode: k_full/v_full must be [dense and retrieval KV heads (", nfull, "), capacity, head_dim (",
              q.size(1), ")], found ", kf.sizes(), " and ", vf.sizes());
    p.k_full = kf.data_ptr(), p.v_full = vf.data_ptr(), p.cap_full = kf.size(1);
  }
  if (kr.defined()) {
    RTP_CHECK(kr.dim() == 3 && vr.sizes() == kr.sizes() && kr.size(0) == nstr && kr.size(1) == cfg.sink + cfg.window &&
                  kr.size(2) == q.size(1),
              "sparse_decode: k_ring/v_ring must be [streaming KV heads (", nstr, "), sink + window (",
              cfg.sink + cfg.window, "), head_dim (", q.size(1), ")], found ", kr.sizes(), " and ", vr.sizes());
    p.k_ring = kr.data_ptr(), p.v_ring = vr.data_ptr();
  }
  if (iq.defined()) {
    // The kernels read 16 index dims per (retrieval head, group member) and per cached token: a wrongly shaped
    // tensor would be read past its end, so the shapes are checked here, not trusted.
    const int64_t G = q.size(0) / std::max<int64_t>(1, static_cast<int64_t>(kinds.size()));
    RTP_CHECK(iq.dim() == 3 && iq.size(0) == nret && iq.size(1) == G && iq.size(2) == k::kIndexDim,
              "sparse_decode: index_q must be [retrieval KV heads (", nret, "), group size (", G, "), ", k::kIndexDim,
              "], found ", iq.sizes());
    // The kernels step from one retrieval head's index rows to the next by k_full's capacity.
    RTP_CHECK(ik.defined() && ik.dim() == 3 && ik.size(0) == nret && ik.size(1) == p.cap_full &&
                  ik.size(2) == k::kIndexDim,
              "sparse_decode: index_k must be [retrieval KV heads (", nret, "), k_full's capacity (", p.cap_full, "), ",
              k::kIndexDim, "], found ", ik.defined() ? ik.sizes() : torch::IntArrayRef{});
    p.index_q = iq.data_ptr(), p.index_k = ik.data_ptr();
  }
  p.index_dtype = idt == torch::kBFloat16 ? k::DType::BF16 : k::DType::F32;
  p.num_q_heads = int(q.size(0));
  p.num_kv_heads = int(kinds.size());
  p.head_dim = int(q.size(1));
  p.kv_len = in.kv_len;
  if (in.position.defined()) {
    RTP_CHECK(in.position.scalar_type() == torch::kInt64 && in.position.numel() == 1 &&
                  in.position.device() == q.device(),
              "sparse_decode: position must be int64 [1] on q's device, found ", in.position.scalar_type(), " ",
              in.position.sizes(), " on ", in.position.device());
    if (cuda) p.position = in.position.data_ptr<int64_t>();
    else p.kv_len = in.position.item<int64_t>() + 1;
  }
  p.head_kind = kinds.data();
  p.sink = cfg.sink;
  p.window = cfg.window;
  p.top_p = cfg.top_p;
  p.keep_first = cfg.keep_first;
  p.keep_last = cfg.keep_last;
  p.tuning = cfg.decode_tuning;
  p.selected_count = sel.data_ptr<int32_t>();
  const char* err = k::check_sparse_decode_params(p, cuda);
  RTP_CHECK(!*err, "sparse_decode: ", err);
  if (cuda) {
#ifdef RTPURBO_WITH_CUDA
    const auto ws = torch::empty({static_cast<int64_t>(k::sparse_decode_workspace_bytes(p))},
                                 q.options().dtype(torch::kUInt8));  // caching allocator: no driver call per token
    p.workspace = ws.data_ptr(), p.workspace_bytes = static_cast<size_t>(ws.numel());
    const DeviceLaunch launch(q.device());
    check_cuda(k::sparse_decode_cuda(p, launch.stream()), "sparse_decode");
#endif
  } else {
    k::sparse_decode_cpu(p);
  }
  if (selected_count) *selected_count = sel;
  if (in.out.defined() && !out_in_place) return in.out.copy_(o);
  return o;
}

}  // namespace rtp::ops
