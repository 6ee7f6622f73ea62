#include "rtp/model/decode_stepper.h"

#include <torch/torch.h>

#include "rtp/core/error.h"
#include "rtp/torch/upload.h"

#ifdef RTPURBO_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace rtp::model {

#ifdef RTPURBO_WITH_CUDA
struct CapturedSegment {
  at::cuda::CUDAGraph graph;
};
#else
struct CapturedSegment {};
#endif

DecodeStepper::DecodeStepper(Qwen3Model& model, bool use_graphs)
    : model_(model), layers_(model.config().num_hidden_layers) {
  const auto& c = model.config();
#ifdef RTPURBO_WITH_CUDA
  use_graphs_ = use_graphs && model.device().is_cuda();
#else
  use_graphs_ = false;
#endif
  auto [inv_freq, factor] = rope_inverse_frequencies(c);
  inv_freq_ = inv_freq.to(model.device());
  attention_factor_ = factor;
}

DecodeStepper::~DecodeStepper() = default;

void DecodeStepper::run_segment(int64_t s) {
  if (s == 0) {
    rope_ = rope_tables_at(position_, inv_freq_, attention_factor_);
    hidden_[0] = ResidualStream{model_.embed(ids_), {}};
  } else {
    hidden_[s] = model_.finish_layer(s - 1, hidden_[s - 1], attention_);
  }
  if (s < layers_) {
    inputs_[s] = model_.attention_inputs(s, hidden_[s], rope_, store_ ? store_->token_slot(s, position_) : TokenSlot{});
    if (store_ && !inputs_[s].token_stored) store_->store_token(inputs_[s], position_);
    if (device_attention_) store_->attend_token_on_device(inputs_[s], position_, attention_);
  } else {
    logits_ = model_.lm_logits(hidden_[s]);
  }
}

void DecodeStepper::prepare(int64_t batch) {
  const auto& c = model_.config();
  const auto dev = model_.device();
  graphs_.clear();
  ids_ = torch::zeros({batch, 1}, torch::TensorOptions(torch::kInt64).device(dev));
  position_ = torch::zeros({1}, torch::TensorOptions(torch::kInt64).device(dev));
  attention_ = torch::zeros({batch, c.num_attention_heads, 1, c.head_dim}, torch::TensorOptions(model_.dtype()).device(dev));
  hidden_.assign(layers_ + 1, ResidualStream());
  inputs_.assign(layers_, LayerAttentionInputs());
}

void DecodeStepper::capture() {
#ifdef RTPURBO_WITH_CUDA
  torch::NoGradGuard no_grad;
  const auto dev = model_.device();
  // Capture needs a stream other than the legacy default one; replays then run on whatever stream is current.
  auto side = c10::cuda::getStreamFromPool(false, dev.index());
  auto current = c10::cuda::getCurrentCUDAStream(dev.index());
  c10::cuda::CUDAEvent before;
  before.record(current);
  before.block(side);
  {
    c10::cuda::CUDAStreamGuard guard(side);
    // One eager pass first: cuBLAS handles and workspaces are created outside any capture.
    for (int64_t s = 0; s <= layers_; ++s) run_segment(s);
    side.synchronize();
    try {
      if (device_attention_) {
        graphs_.push_back(std::make_unique<CapturedSegment>());
        graphs_.back()->graph.capture_begin();
        for (int64_t s = 0; s <= layers_; ++s) run_segment(s);
        graphs_.back()->graph.capture_end();
      } else {
        for (int64_t s = 0; s <= layers_; ++s) {
          graphs_.push_back(std::make_unique<CapturedSegment>());
          // One memory pool for all segments: safe because they replay in the order they were captured.
          graphs_.back()->graph.capture_begin(s == 0 ? c10::MempoolId_t{0, 0} : graphs_.front()->graph.pool());
          run_segment(s);
          graphs_.back()->graph.capture_end();
        }
      }
    } catch (const std::exception& e) {
      RTP_THROW("decode step: capturing a layer's work as a CUDA graph failed (", e.what(), "); decode without graphs ",
                "instead: rtpurbo-eval --no-cuda-graphs, or DecodeStepper(model, /*use_graphs=*/false)");
    }
  }
  c10::cuda::CUDAEvent after;
  after.record(side);
  after.block(current);
#endif
}

torch::Tensor DecodeStepper::step(const torch::Tensor& ids, const ForwardOptions& o) {
  const auto& c = model_.config();
  RTP_CHECK(ids.dim() == 2 && ids.size(1) == 1 && ids.scalar_type() == torch::kInt64,
            "decode step: ids must be int64 [B, 1], found ", ids.sizes(), " ", ids.scalar_type());
  RTP_CHECK(!o.return_hidden && o.stop_after_layer < 0, "decode step: return_hidden and stop_after_layer are not supported");
  RTP_CHECK(!o.cache || o.cache->num_layers() == layers_, "KV cache has ", o.cache ? o.cache->num_layers() : 0,
            " layers, the model ", layers_);
  if (ids.device().is_cpu()) {
    auto [mn, mx] = torch::aminmax(ids);
    RTP_CHECK(mn.item<int64_t>() >= 0 && mx.item<int64_t>() < c.vocab_size, "input_ids must lie in [0, ", c.vocab_size,
              "), found values in [", mn.item<int64_t>(), ", ", mx.item<int64_t>(), "]");
  }
  torch::NoGradGuard no_grad;
  const int64_t batch = ids.size(0);
  if (!ids_.defined() || ids_.size(0) != batch) prepare(batch);
  const int64_t position = o.cache ? o.cache->length() : o.position_offset;
  // Host ids (checked above) without a wait for the queued steps.
  copy_without_wait(ids_, ids);
  position_.fill_(position);
  // The split path (step_attention.h): the cache's writes run inside the segments. An observer wants the inputs with
  // the whole cache, as forward() hands them out: that step takes the ordinary path.
  StepAttention* split = nullptr;
  if (!o.observer && o.cache && !o.attention) split = o.cache;
  if (!o.observer && o.attention && !o.cache) split = dynamic_cast<StepAttention*>(o.attention);
  const auto buffers = split ? split->begin_step(position) : nullptr;
  if (!buffers) split = nullptr;
  store_ = split;
  device_attention_ = split && split->attends_on_device(c.num_attention_heads);
  // Graphs write to the addresses they were captured with: other buffers (a new or regrown cache) or the other path
  // need new graphs. An expired token means the buffers it stood for are gone, whatever address a new one has.
  if (!graphs_.empty()) {
    const bool same = graphs_store_ == split && graphs_device_attention_ == device_attention_ &&
                      (!split || (!graphs_buffers_.expired() && graphs_buffers_.lock() == buffers));
    if (!same) graphs_.clear();
  }
  // MoE layers beyond a few tokens group tokens by expert counts read on the host: eager for such batches.
  if (use_graphs_ && graphs_.empty() && model_.forward_reads_no_host_values(batch)) {
    capture();
    ++captures_;
    graphs_store_ = split;
    graphs_device_attention_ = device_attention_;
    graphs_buffers_ = buffers;
  }
  if (device_attention_) {
    // Every layer's attention runs inside the segments: one replay, or the segments in order.
    bool replayed = false;
#ifdef RTPURBO_WITH_CUDA
    if (!graphs_.empty()) {
      graphs_.front()->graph.replay();
      replayed = true;
    }
#endif
    if (!replayed)
      for (int64_t s = 0; s <= layers_; ++s) run_segment(s);
    split->end_step(position);
    if (o.cache) o.cache->advance(1);
    return logits_;
  }
  DenseAttention dense;
  AttentionSeam* seam = o.attention ? o.attention : &dense;
  for (int64_t s = 0; s <= layers_; ++s) {
#ifdef RTPURBO_WITH_CUDA
    if (!graphs_.empty()) graphs_[s]->graph.replay();
    else run_segment(s);
#else
    run_segment(s);
#endif
    if (s == layers_) break;
    LayerAttentionInputs in = inputs_[s];
    if (split) {
      split->attend_token(in, position, attention_);
      continue;
    }
    if (o.cache) std::tie(in.k, in.v) = o.cache->append(s, in.k, in.v);
    if (o.observer) o.observer(in);
    attention_.copy_(seam->attend(in));
  }
  if (o.cache) o.cache->advance(1);
  return logits_;
}

}  // namespace rtp::model
