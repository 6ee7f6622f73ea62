#include "rtp/sparse/sparse_cache.h"

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "rtp/core/error.h"
#include "rtp/kernels/build_info.h"
#include "rtp/ops/sparse_attention.h"
#include "rtp/ops/sparse_token_store.h"
#include "rtp/torch/upload.h"

namespace rtp::sparse {

SparseCache::SparseCache(const model::ModelConfig& config, HeadMap heads, SparseSettings settings,
                         const Indexer* indexer, int64_t capacity, torch::Device device, torch::ScalarType dtype)
    : config_(config),
      heads_(std::move(heads)),
      settings_(settings),
      indexer_(indexer),
      capacity_(capacity),
      prefill_(heads_, settings_, indexer) {
  RTP_CHECK(capacity > 0, "sparse cache: capacity must be positive, found ", capacity);
  const int64_t L = config.num_hidden_layers, D = config.head_dim;
  auto opt = torch::TensorOptions(dtype).device(device);
  element_size_ = static_cast<int64_t>(torch::empty({}, opt).element_size());
  kinds_.resize(L);
  full_k_.resize(L), full_v_.resize(L), index_k_.resize(L), ring_k_.resize(L), ring_v_.resize(L), last_selected_.resize(L);
  retrieval_rows_.resize(L), streaming_rows_.resize(L), step_index_q_.resize(L);
  all_streaming_rows_.resize(L);
  ring_slot_ = torch::zeros({1}, torch::TensorOptions(torch::kInt64).device(device));
  for (int64_t l = 0; l < L; ++l) {
    int64_t n_ret = 0, n_str = 0;
    std::vector<int64_t> ret_rows, str_rows;
    for (int64_t g = 0; g < config.num_key_value_heads; ++g) {
      const bool r = heads_.is_retrieval(l, g);
      kinds_[l].push_back(r ? kernels::HeadKind::RETRIEVAL : kernels::HeadKind::STREAMING);
      (r ? n_ret : n_str) += 1;
      (r ? ret_rows : str_rows).push_back(g);
    }
    // Up to three uploads per layer: without a wait each (a blocking one drained the device's queue 92 times per new
    // cache of Qwen3-30B-A3B, traced).
    const auto rows = [&](const std::vector<int64_t>& v) { return upload_without_wait(torch::tensor(v, torch::kInt64), device); };
    if (n_ret > 0 && n_str > 0) retrieval_rows_[l] = rows(ret_rows), streaming_rows_[l] = rows(str_rows);
    all_streaming_rows_[l] = rows(str_rows);
    // Tokens each retrieval head attended at the last decode step (the decode op's counter: one slot even without).
    last_selected_[l] = torch::zeros({std::max<int64_t>(n_ret, 1)}, torch::TensorOptions(torch::kInt32).device(device));
    RTP_CHECK(n_ret == 0 || indexer != nullptr, "sparse cache: layer ", l, " has retrieval heads but no indexer");
    if (n_ret > 0) {
      full_k_[l] = torch::zeros({n_ret, capacity, D}, opt);
      full_v_[l] = torch::zeros({n_ret, capacity, D}, opt);
      // The selection reads bf16 index keys on a GPU and float32 ones on the CPU (as the one-shot prefill does):
      // stored that way, no step converts the whole cache.
      index_k_[l] = torch::zeros({n_ret, capacity, settings.indexer_dim},
                                 opt.dtype(device.is_cuda() ? torch::kBFloat16 : torch::kFloat32));
    }
    if (n_str > 0) {
      ring_k_[l] = torch::zeros({n_str, settings.sink + settings.window, D}, opt);
      ring_v_[l] = torch::zeros({n_str, settings.sink + settings.window, D}, opt);
    }
  }
  fused_store_available_ = ops::sparse_token_store_supported(device, dtype) &&
                           config.num_key_value_heads <= kernels::kTokenStoreMaxKvHeads &&
                           (indexer == nullptr || indexer->head_dim() == D);
  if (fused_store_available_) {
    const int64_t G = config.num_attention_heads / config.num_key_value_heads, I = settings.indexer_dim;
    store_k_weight_.resize(L), store_q_weight_.resize(L), store_params_.resize(L);
    for (int64_t l = 0; l < L; ++l) {
      auto& p = store_params_[l];
      p.dtype = dtype == torch::kBFloat16 ? kernels::DType::BF16 : kernels::DType::F32;
      p.index_dtype = kernels::DType::BF16;  // index_k_ on a GPU
      p.kv_heads = static_cast<int>(config.num_key_value_heads);
      p.group_size = static_cast<int>(G);
      p.head_dim = static_cast<int>(D);
      p.index_dim = static_cast<int>(I);
      int n_ret = 0, n_str = 0;
      for (int64_t g = 0; g < config.num_key_value_heads; ++g) {
        const bool r = kinds_[l][g] == kernels::HeadKind::RETRIEVAL;
        p.retrieval_slot_of[g] = static_cast<int8_t>(r ? n_ret++ : -1);
        p.streaming_slot_of[g] = static_cast<int8_t>(r ? -1 : n_str++);
      }
      if (n_ret > 0) {
        RTP_CHECK(indexer->dim() == I, "sparse cache: the indexer has dim ", indexer->dim(), ", the settings ", I);
        store_k_weight_[l] = indexer->k_proj(l).view({n_ret, I, D}).to(device, dtype).contiguous();
        store_q_weight_[l] = indexer->q_proj(l).view({n_ret * G, I, D}).to(device, dtype).contiguous();
        step_index_q_[l] = torch::zeros({n_ret, G, I}, opt);
        p.full_k = full_k_[l].data_ptr(), p.full_v = full_v_[l].data_ptr();
        p.index_keys = index_k_[l].data_ptr();
        p.index_k_weight = store_k_weight_[l].data_ptr(), p.index_q_weight = store_q_weight_[l].data_ptr();
        p.index_q_out = step_index_q_[l].data_ptr();
        p.full_capacity = capacity;
      }
      if (n_str > 0) {
        p.ring_k = ring_k_[l].data_ptr(), p.ring_v = ring_v_[l].data_ptr();
        p.ring_capacity = settings.sink + settings.window;
        p.ring_slot = ring_slot_.data_ptr<int64_t>();
      }
    }
    fused_store_ = true;
  }
}

void SparseCache::clear() {
  length_ = 0;
  prompt_length_ = 0;
  chunked_ = false;
  chunk_stats_ = {};
  chunk_counts_.clear();
  prefill_.reset_stats();
}

model::ForwardOptions SparseCache::options() {
  model::ForwardOptions o;
  o.attention = this;
  o.position_offset = length_;
  return o;
}

std::shared_ptr<const void> SparseCache::begin_step(int64_t position) {
  RTP_CHECK(position == length_, "sparse cache: a decode step at position ", position, " of a cache holding ", length_,
            " tokens");
  if (length_ == 0 || length_ < prompt_length_) return nullptr;  // the prompt is not in yet
  RTP_CHECK(position < capacity_, "sparse cache: ", position + 1, " tokens exceed the capacity ", capacity_);
  // Only tokens still visible to a later query need a slot; later tokens overwrite earlier ones.
  const int64_t slot = position < settings_.sink ? position : settings_.sink + (position - settings_.sink) % settings_.window;
  ring_slot_.fill_(slot);
  return buffers_;
}

bool SparseCache::store_fused(const model::LayerAttentionInputs& in, const torch::Tensor& position) {
  const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
  const auto& qsrc = settings_.post_rope_indexer ? in.q : in.q_pre_rope;
  // One token of batch 1, rows of unit element stride in the cache's dtype on its device: else the eager path.
  const auto& buffer = full_k_[in.layer].defined() ? full_k_[in.layer] : ring_k_[in.layer];
  const auto rows_ok = [&](const torch::Tensor& t, int64_t heads) {
    return t.defined() && t.dim() == 4 && t.size(0) == 1 && t.size(1) == heads && t.size(2) == 1 &&
           t.size(3) == config_.head_dim && t.stride(3) == 1 && t.scalar_type() == buffer.scalar_type() &&
           t.device() == buffer.device();
  };
  const int64_t Hkv = config_.num_key_value_heads, Hq = config_.num_attention_heads;
  if (!rows_ok(in.k, Hkv) || !rows_ok(in.v, Hkv) || !rows_ok(ksrc, Hkv) || !rows_ok(qsrc, Hq) ||
      position.scalar_type() != torch::kInt64 || position.numel() != 1 || position.device() != buffer.device())
    return false;
  auto p = store_params_[in.layer];
  p.k = in.k.data_ptr(), p.k_head_stride = in.k.stride(1);
  p.v = in.v.data_ptr(), p.v_head_stride = in.v.stride(1);
  p.index_k_src = ksrc.data_ptr(), p.index_k_src_head_stride = ksrc.stride(1);
  p.index_q_src = qsrc.data_ptr(), p.index_q_src_head_stride = qsrc.stride(1);
  p.position = position.data_ptr<int64_t>();
  ops::sparse_token_store(p, position.device());
  ++fused_stores_;
  return true;
}

void SparseCache::store_token(const model::LayerAttentionInputs& in, const torch::Tensor& position) {
  if (fused_store_ && store_fused(in, position)) return;
  // A few gathers and indexed copies per layer, not a copy per head; positions come from device memory, so a CUDA
  // graph of this serves every step.
  const int64_t l = in.layer;
  const auto k = in.k[0], v = in.v[0];  // [Hkv, 1, D]
  const auto pick = [](const torch::Tensor& t, const torch::Tensor& rows) { return rows.defined() ? t.index_select(0, rows) : t; };
  if (full_k_[l].defined()) {
    full_k_[l].index_copy_(1, position, pick(k, retrieval_rows_[l]));
    full_v_[l].index_copy_(1, position, pick(v, retrieval_rows_[l]));
    const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
    const auto& qsrc = settings_.post_rope_indexer ? in.q : in.q_pre_rope;
    index_k_[l].index_copy_(1, position, indexer_->index_keys(l, ksrc)[0].to(index_k_[l].scalar_type()));
    auto iq = indexer_->index_queries(l, qsrc)[0].select(2, 0);  // [n, G, 1, dim] -> [n, G, dim]
    // The fused store's buffer stays where it is (a graph captured with either path reads it there).
    if (fused_store_available_) step_index_q_[l].copy_(iq);
    else step_index_q_[l] = iq.contiguous();
  }
  if (ring_k_[l].defined()) {
    ring_k_[l].index_copy_(1, ring_slot_, pick(k, streaming_rows_[l]));
    ring_v_[l].index_copy_(1, ring_slot_, pick(v, streaming_rows_[l]));
  }
}

ops::DecodeInputs SparseCache::decode_inputs(const model::LayerAttentionInputs& in, torch::Tensor& out) {
  const int64_t l = in.layer;
  ops::DecodeInputs d;
  d.q = in.q[0].select(1, 0);  // [Hq, D]
  if (full_k_[l].defined()) {
    d.k_full = full_k_[l];
    d.v_full = full_v_[l];
    d.index_q = step_index_q_[l];
    d.index_k = index_k_[l];
  }
  if (ring_k_[l].defined()) {
    d.k_ring = ring_k_[l];
    d.v_ring = ring_v_[l];
  }
  d.out = out[0].select(1, 0);  // [Hq, D] of [1, Hq, 1, D]
  d.selected = last_selected_[l];
  return d;
}

void SparseCache::attend_token(const model::LayerAttentionInputs& in, int64_t position, torch::Tensor& out) {
  auto d = decode_inputs(in, out);
  d.kv_len = position + 1;
  ops::sparse_decode(d, kinds_[in.layer], to_ops_config(settings_));
  if (in.layer == config_.num_hidden_layers - 1) length_ = position + 1;
}

bool SparseCache::attends_on_device(int64_t query_heads) const {
  const auto& buffer = full_k_[0].defined() ? full_k_[0] : ring_k_[0];
  return device_attention_ && buffer.is_cuda() && query_heads == config_.num_attention_heads &&
         ops::sparse_decode_gpu_takes(buffer.scalar_type(), config_.head_dim, query_heads, config_.num_key_value_heads);
}

void SparseCache::attend_token_on_device(const model::LayerAttentionInputs& in, const torch::Tensor& position,
                                         torch::Tensor& out) {
  auto d = decode_inputs(in, out);
  d.kv_len = capacity_;  // the grids serve every length up to the capacity; the kernels read t from `position`
  d.position = position;
  ops::sparse_decode(d, kinds_[in.layer], to_ops_config(settings_));
}

void SparseCache::write_full(int64_t layer, const model::LayerAttentionInputs& in, int64_t start, int64_t T) {
  // One copy per head instead of one per (token, head): a 32K-token prompt in a 48-layer model would otherwise
  // issue millions of row copies.
  int64_t r = 0;
  for (int64_t g = 0; g < config_.num_key_value_heads; ++g) {
    if (kinds_[layer][g] != kernels::HeadKind::RETRIEVAL) continue;
    full_k_[layer][r].narrow(0, start, T).copy_(in.k[0][g]);
    full_v_[layer][r].narrow(0, start, T).copy_(in.v[0][g]);
    ++r;
  }
}

std::pair<torch::Tensor, torch::Tensor> SparseCache::streaming_kv(const model::LayerAttentionInputs& in) const {
  const auto& rows = all_streaming_rows_[in.layer];
  const auto dt = ring_k_[in.layer].scalar_type();
  return {in.k[0].index_select(0, rows).to(dt), in.v[0].index_select(0, rows).to(dt)};
}

namespace {
// The ring slots of tokens [first, end), all past the sinks and at most `window` of them (so no slot twice): one run
// of consecutive slots, or two where the run passes the ring's end. Copies of these runs replace a gather and an
// indexed copy (with their index arithmetic) per layer and chunk.
std::vector<std::pair<int64_t, int64_t>> ring_runs(int64_t first, int64_t end, int64_t sink, int64_t window) {
  const int64_t n = end - first, slot = sink + (first - sink) % window, head = std::min(n, sink + window - slot);
  std::vector<std::pair<int64_t, int64_t>> runs{{slot, head}};
  if (n > head) runs.emplace_back(sink, n - head);
  return runs;
}
}  // namespace

void SparseCache::write_ring(int64_t layer, const torch::Tensor& k_str, const torch::Tensor& v_str, int64_t start,
                             int64_t T) {
  // Streaming heads keep the sinks and the last `window` tokens, each in the slot write_token would have left it
  // in; tokens of the range that a later token of the same range overwrites are not written at all. All streaming
  // heads of the layer at once.
  const int64_t sink = settings_.sink, W = settings_.window, end = start + T;
  const int64_t sink_end = std::min(sink, end);
  const int64_t first = std::max({sink, start, end - W});
  if (start < sink_end) {
    ring_k_[layer].narrow(1, start, sink_end - start).copy_(k_str.narrow(1, 0, sink_end - start));
    ring_v_[layer].narrow(1, start, sink_end - start).copy_(v_str.narrow(1, 0, sink_end - start));
  }
  if (first < end) {
    int64_t row = first - start;
    for (const auto& [slot, n] : ring_runs(first, end, sink, W)) {
      ring_k_[layer].narrow(1, slot, n).copy_(k_str.narrow(1, row, n));
      ring_v_[layer].narrow(1, slot, n).copy_(v_str.narrow(1, row, n));
      row += n;
    }
  }
}

void SparseCache::begin_prompt(int64_t tokens) {
  RTP_CHECK(length_ == 0, "sparse cache: begin_prompt on a cache that already holds ", length_, " tokens");
  RTP_CHECK(tokens > 0 && tokens <= capacity_, "sparse cache: a prompt of ", tokens,
            " tokens does not fit the capacity ", capacity_);
  prompt_length_ = tokens;
}

// Pairs one chunk's queries attend, per KV head, into chunk_stats_ (the same quantities SparseAttention counts
// for a one-shot prefill, summed over the chunks). The streaming heads' and the causal counts are arithmetic on the
// host; the retrieval heads' follow from the lists' counts, kept until prefill_stats() reads them.
void SparseCache::add_chunk_stats(int64_t layer, int64_t start, int64_t T, const ops::BlockLists* lists) {
  const int64_t Hkv = config_.num_key_value_heads, G = config_.group_size();
  const int64_t end = start + T;
  if (chunk_stats_.head_attended.empty()) {
    chunk_stats_.head_attended.assign(config_.num_hidden_layers, std::vector<double>(Hkv, 0.0));
    chunk_stats_.head_causal.assign(config_.num_hidden_layers, std::vector<double>(Hkv, 0.0));
  }
  const double causal = (static_cast<double>(end) * (end + 1) - static_cast<double>(start) * (start + 1)) / 2;
  double stream = 0;
  for (int64_t i = start; i < end; ++i)
    stream += static_cast<double>(std::min(i + 1, settings_.window) +
                                  std::min(settings_.sink, std::max<int64_t>(0, i + 1 - settings_.window)));
  for (int64_t g = 0; g < Hkv; ++g) {
    if (kinds_[layer][g] != kernels::HeadKind::RETRIEVAL) {
      chunk_stats_.head_attended[layer][g] += stream * G;
      chunk_stats_.attended_pairs += stream * G;
    }
    chunk_stats_.head_causal[layer][g] += causal * G;
  }
  chunk_stats_.causal_pairs += causal * Hkv * G;
  if (lists) chunk_counts_.push_back({layer, start, end, lists->counts});
}

const SparseStats& SparseCache::prefill_stats() const {
  if (!chunked_) return prefill_.stats();
  if (!chunk_counts_.empty()) {
    // Every list holds its own (diagonal) block once and otherwise only earlier blocks (the selection contract,
    // sparse_attention_params.h; local_blocks >= 1), so query block b with `rows` queries attends
    // rows x B x (count - 1) + rows (rows + 1) / 2 pairs: the counts say it all. One copy to the host for the prompt.
    std::vector<torch::Tensor> flat;
    for (const auto& c : chunk_counts_) flat.push_back(c.counts.reshape({-1}));
    const auto host = torch::cat(flat).to(torch::kCPU, torch::kInt64);
    const int64_t* counts = host.data_ptr<int64_t>();
    const int64_t B = settings_.block_size, G = config_.group_size();
    for (const auto& c : chunk_counts_) {
      const int64_t R = c.counts.size(0), nqb = c.counts.size(1);
      int64_t r = 0;  // retrieval slot: the layer's retrieval heads in ascending order
      for (int64_t g = 0; g < config_.num_key_value_heads; ++g) {
        if (kinds_[c.layer][g] != kernels::HeadKind::RETRIEVAL) continue;
        double pairs = 0;
        for (int64_t m = 0; m < nqb; ++m) {
          const int64_t b = c.start / B + m, rows = std::min((b + 1) * B, c.end) - b * B;
          pairs += static_cast<double>(rows) * B * static_cast<double>(counts[r * nqb + m] - 1) +
                   static_cast<double>(rows) * (rows + 1) / 2;
        }
        chunk_stats_.head_attended[c.layer][g] += pairs * G;
        chunk_stats_.attended_pairs += pairs * G;
        ++r;
      }
      RTP_CHECK(r == R, "sparse cache: layer ", c.layer, " has ", r, " retrieval heads but block lists for ", R);
      counts += R * nqb;
    }
    chunk_counts_.clear();
  }
  return chunk_stats_;
}

torch::Tensor SparseCache::attend_chunk(const model::LayerAttentionInputs& in, int64_t start) {
  const int64_t l = in.layer, T = in.q.size(2), end = start + T;
  const int64_t Hkv = in.k.size(1);
  RTP_CHECK(end == prompt_length_ || end % settings_.block_size == 0, "sparse cache: prompt chunk [", start, ", ", end,
            ") of a ", prompt_length_, "-token prompt must end at a multiple of block_size (", settings_.block_size,
            ") or at the prompt's end: a retrieval query block is selected from all its queries at once");
  const auto cfg = to_ops_config(settings_);
  const auto q = in.q[0];  // [Hq, T, D]
  auto out = torch::empty_like(q);
  int64_t n_ret = 0;
  for (int64_t g = 0; g < Hkv; ++g) n_ret += kinds_[l][g] == kernels::HeadKind::RETRIEVAL;
  const int64_t n_str = Hkv - n_ret;
  // The CUDA kernels take D of 64 or 128 only; elsewhere the chunk runs on the CPU reference (tiny test models).
  const bool on_host = q.is_cuda() && !(kernels::built_with_cuda() && (q.size(2) == 64 || q.size(2) == 128));
  // The heads of one kind read their queries from q and write their outputs into out in place (QueryGroupsInto).
  auto attention = [&](kernels::HeadKind kind, const torch::Tensor& kk, const torch::Tensor& vv,
                       const ops::BlockLists& bl, int64_t skip) {
    ops::QueryGroupsInto into{{}, config_.group_size(), out};
    for (int64_t g = 0; g < Hkv; ++g)
      if (kinds_[l][g] == kind) into.group.push_back(static_cast<int32_t>(g));
    const std::vector<kernels::HeadKind> kinds(into.group.size(), kind);
    if (!on_host) return void(ops::sparse_attention(q, kk, vv, kinds, bl, cfg, start, skip, &into));
    auto host = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat32); };
    ops::BlockLists hl{bl.counts.defined() ? bl.counts.cpu() : bl.counts, bl.indices.defined() ? bl.indices.cpu() : bl.indices};
    into.out = host(out);
    out.copy_(ops::sparse_attention(host(q), host(kk), host(vv), kinds, hl, cfg, start, skip, &into));
  };
  ops::BlockLists lists;
  if (n_ret > 0) {
    // Named ranges in a profiler trace (rtpurbo-bench-decode --trace-prefill); nothing when no profiler runs.
    RECORD_FUNCTION("rtp::sparse_chunk::retrieval", std::vector<c10::IValue>());
    // The chunk's own keys first: its queries attend to them.
    write_full(l, in, start, T);
    const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
    const auto& qsrc = settings_.post_rope_indexer ? in.q : in.q_pre_rope;
    index_k_[l].narrow(1, start, T).copy_(indexer_->index_keys(l, ksrc)[0]);
    // The one-shot prefill selects from bf16 index vectors on the GPU and float32 ones on the CPU: the same here.
    const auto idt = q.is_cuda() ? torch::kBFloat16 : torch::kFloat32;
    auto iq = indexer_->index_queries(l, qsrc)[0].to(idt).contiguous();  // [n_ret, G, T, dim]
    auto ik = index_k_[l].narrow(1, 0, end).to(idt).contiguous();        // [n_ret, end, dim]
    {
      RECORD_FUNCTION("rtp::sparse_chunk::select_blocks", std::vector<c10::IValue>());
      lists = ops::select_blocks(iq, ik, cfg, 0, start);
    }
    attention(kernels::HeadKind::RETRIEVAL, full_k_[l].narrow(1, 0, end), full_v_[l].narrow(1, 0, end), lists, 0);
  }
  if (n_str > 0) {
    RECORD_FUNCTION("rtp::sparse_chunk::streaming", std::vector<c10::IValue>());
    // Keys: the ring's sinks, its tokens from the first query's window on, then the chunk's own (header comment).
    const int64_t sink = settings_.sink, W = settings_.window;
    const auto [k_str, v_str] = streaming_kv(in);
    std::vector<torch::Tensor> ks, vs;
    int64_t skip = 0;
    if (start <= sink) {
      ks.push_back(ring_k_[l].narrow(1, 0, start)), vs.push_back(ring_v_[l].narrow(1, 0, start));
    } else {
      const int64_t h0 = std::max(sink, start - W + 1);
      skip = h0 - sink;
      ks.push_back(ring_k_[l].narrow(1, 0, sink)), vs.push_back(ring_v_[l].narrow(1, 0, sink));
      if (h0 < start)
        for (const auto& [slot, n] : ring_runs(h0, start, sink, W))
          ks.push_back(ring_k_[l].narrow(1, slot, n)), vs.push_back(ring_v_[l].narrow(1, slot, n));
    }
    ks.push_back(k_str), vs.push_back(v_str);
    attention(kernels::HeadKind::STREAMING, torch::cat(ks, 1), torch::cat(vs, 1), {}, skip);
    {
      RECORD_FUNCTION("rtp::sparse_chunk::ring_write", std::vector<c10::IValue>());
      write_ring(l, k_str, v_str, start, T);
    }
  }
  RECORD_FUNCTION("rtp::sparse_chunk::stats", std::vector<c10::IValue>());
  add_chunk_stats(l, start, T, n_ret > 0 ? &lists : nullptr);
  return out.unsqueeze(0);
}

torch::Tensor SparseCache::attend(const model::LayerAttentionInputs& in) {
  RTP_CHECK(in.q.size(0) == 1, "sparse cache: one sequence at a time, found batch ", in.q.size(0));
  const int64_t l = in.layer, T = in.q.size(2);
  const int64_t start = length_;
  RTP_CHECK(start + T <= capacity_, "sparse cache: ", start + T, " tokens exceed the capacity ", capacity_);
  torch::NoGradGuard no_grad;
  const auto& ksrc = settings_.post_rope_indexer ? in.k : in.k_pre_rope;
  const bool has_ret = full_k_[l].defined();
  const bool in_prompt = start < prompt_length_;
  torch::Tensor out;
  if (in_prompt && !(start == 0 && T == prompt_length_)) {
    RTP_CHECK(start + T <= prompt_length_, "sparse cache: a prompt chunk [", start, ", ", start + T,
              ") runs past the announced prompt of ", prompt_length_, " tokens");
    RTP_CHECK(prompt_length_ >= settings_.dense_below, "sparse cache: a ", prompt_length_,
              "-token prompt is below dense_below (", settings_.dense_below,
              ") and runs dense: it cannot be chunked (the streaming rings do not hold the keys dense attention needs)");
    chunked_ = true;
    out = attend_chunk(in, start);
  } else if (start == 0) {
    out = prefill_.attend(in);
    write_full(l, in, 0, T);
    if (ring_k_[l].defined()) {
      const auto [k_str, v_str] = streaming_kv(in);
      write_ring(l, k_str, v_str, 0, T);
    }
    if (has_ret) index_k_[l].narrow(1, 0, T).copy_(indexer_->index_keys(l, ksrc)[0]);
  } else {
    // One decoded token: the calls the decode stepper makes, so that both paths agree.
    RTP_CHECK(T == 1, "sparse cache: after the prompt, tokens come one at a time (found ", T, ")");
    if (l == 0) RTP_CHECK(begin_step(start) != nullptr, "internal: sparse cache decode step before the prompt");
    store_token(in, torch::full({1}, start, torch::TensorOptions(torch::kInt64).device(in.q.device())));
    out = torch::empty({1, in.q.size(1), 1, in.q.size(3)}, in.q.options());
    attend_token(in, start, out);
    return out;  // attend_token advanced the length at the last layer
  }
  if (l == config_.num_hidden_layers - 1) length_ += T;
  return out;
}

int64_t SparseCache::layer_bytes(int64_t layer) const {
  RTP_CHECK(layer >= 0 && layer < static_cast<int64_t>(kinds_.size()), "sparse cache: no layer ", layer);
  int64_t n = 0;
  const int64_t D = config_.head_dim;
  const auto& ik = index_k_[static_cast<size_t>(layer)];
  const int64_t index_bytes = ik.defined() ? static_cast<int64_t>(ik.element_size()) : 0;
  for (auto k : kinds_[static_cast<size_t>(layer)])
    n += k == kernels::HeadKind::RETRIEVAL
             ? length_ * (2 * D * element_size_ + settings_.indexer_dim * index_bytes)
             : std::min(length_, settings_.sink + settings_.window) * 2 * D * element_size_;
  return n;
}

int64_t SparseCache::bytes() const {
  int64_t n = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(kinds_.size()); ++l) n += layer_bytes(l);
  return n;
}

int64_t SparseCache::dense_bytes() const {
  return config_.num_hidden_layers * config_.num_key_value_heads * length_ * 2 * config_.head_dim * element_size_;
}

}  // namespace rtp::sparse

namespace rtp::sparse {

torch::Tensor prefill_chunked(model::Qwen3Model& model, SparseCache& cache, const torch::Tensor& prompt,
                              int64_t chunk) {
  RTP_CHECK(prompt.dim() == 2 && prompt.size(0) == 1 && prompt.size(1) > 0, "prefill_chunked: prompt must be [1, P] ",
            "with P > 0, found ", prompt.sizes());
  RTP_CHECK(cache.length() == 0, "prefill_chunked: the cache already holds ", cache.length(), " tokens");
  const int64_t P = prompt.size(1), B = cache.settings().block_size;
  // Host ids stay on the host: each chunk's forward checks its range there and uploads it without a wait.
  const auto& ids = prompt;
  // options() per forward: it carries the cache's current length.
  const auto options = [&cache] {
    auto o = cache.options();
    o.last_position_logits = true;
    return o;
  };
  if (chunk <= 0 || chunk >= P || P < cache.settings().dense_below) return model.forward(ids, options());
  RTP_CHECK(chunk % B == 0, "prefill_chunked: the chunk size (", chunk, ") must be a multiple of the block size (", B,
            "): a retrieval query block is selected from all its queries at once");
  cache.begin_prompt(P);
  torch::Tensor logits;
  for (int64_t c = 0; c < P; c += chunk) logits = model.forward(ids.narrow(1, c, std::min(chunk, P - c)), options());
  return logits;
}

}  // namespace rtp::sparse
