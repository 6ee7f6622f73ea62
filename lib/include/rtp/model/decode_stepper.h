#pragma once
// One-token forward steps for generation. A decode step of a small model is bound by the host, not the GPU: eagerly,
// every layer issues some hundred ATen calls (norms, projections, RoPE, MLP) of a few microseconds each, so a
// 28-layer 0.6B model spends tens of milliseconds per token launching kernels that run for one. On CUDA the stepper
// captures the work between two attention calls (the rest of one layer and the start of the next) as one CUDA graph
// per layer on its first step and replays them. With a cache that is a StepAttention (the dense KVCache, the sparse
// cache) the graphs also store the token in the cache. Where the cache's decode kernels read the length from device
// memory (StepAttention::attends_on_device: one bf16 sequence, head_dim 64 or 128, on a GPU) the attention is captured
// too and the whole step is one graph; elsewhere the attention call stays eager between the layers' replays. The
// step's position lives in a device buffer the graphs read, so the same graphs serve every position; they are
// captured again when the cache's buffers change.
//
// Results are the ones forward() gives for the same token: the same ATen calls on the same inputs, in the same
// order (tests/model/decode_stepper_test.cpp, tests/model/decode_stepper_gpu_test.cpp). The graphs hold the addresses of
// the model's weights: do not move the model (Qwen3Model::to) while a stepper of it is alive.
#include <torch/types.h>

#include <functional>
#include <memory>
#include <vector>

#include "rtp/model/qwen3.h"
#include "rtp/model/step_attention.h"

namespace rtp::model {

struct CapturedSegment;  // a CUDA graph (decode_stepper.cpp)

class DecodeStepper {
 public:
  // use_graphs: capture CUDA graphs where they apply (a CUDA model whose step reads no value on the host: MoE layers
  // qualify up to ops::kMoeDecodeMaxTokens sequences). Elsewhere the same pieces run eagerly.
  explicit DecodeStepper(Qwen3Model& model, bool use_graphs = true);
  ~DecodeStepper();
  DecodeStepper(const DecodeStepper&) = delete;
  DecodeStepper& operator=(const DecodeStepper&) = delete;

  // Logits [B, 1, V] (float32) of the next token after `ids` (int64 [B, 1]) at position o.cache->length() (with a
  // cache) or o.position_offset, attention through o.attention / o.cache / o.observer as in forward().
  // return_hidden and stop_after_layer are not supported. Device ids are not range-checked (a step feeds back the
  // model's own argmax); host ids are. With graphs the result is a buffer the next step overwrites.
  torch::Tensor step(const torch::Tensor& ids, const ForwardOptions& o);

  // True once graphs are captured and replayed.
  bool graphed() const { return !graphs_.empty(); }
  bool uses_graphs() const { return use_graphs_; }
  // How many times the graphs were captured (once, plus once per change of cache buffers or path).
  int64_t captures() const { return captures_; }
  // Whether the last step's attention ran inside the layers' work (StepAttention::attends_on_device): with graphs,
  // one graph per step.
  bool attention_in_graph() const { return device_attention_; }

 private:
  // Segment s: s == 0 embeds and prepares layer 0's attention; 0 < s < L finishes layer s-1 and prepares layer s;
  // s == L finishes the last layer and computes the logits. With device attention a segment ends with its layer's
  // attention, and all segments are captured as one graph.
  void run_segment(int64_t s);
  void capture();
  void prepare(int64_t batch);

  Qwen3Model& model_;
  bool use_graphs_;
  // The step's StepAttention (null: the ordinary path) and what the graphs were captured for.
  StepAttention* store_ = nullptr;
  StepAttention* graphs_store_ = nullptr;
  bool device_attention_ = false, graphs_device_attention_ = false;
  std::weak_ptr<const void> graphs_buffers_;
  int64_t captures_ = 0;
  int64_t layers_;
  torch::Tensor inv_freq_;
  double attention_factor_ = 1.0;
  // Buffers the segments read: the token ids, the position, the attention output of the current layer.
  torch::Tensor ids_, position_, attention_;
  // What the segments produce (kept alive: captured graphs write to these addresses on every replay).
  RopeTables rope_;
  std::vector<ResidualStream> hidden_;
  std::vector<LayerAttentionInputs> inputs_;
  torch::Tensor logits_;
  std::vector<std::unique_ptr<CapturedSegment>> graphs_;
};

// Greedy tokens after a prefilled prompt: `logits` [B, n, V] are the prompt's last forward, every further token is
// one stepper.step(token, options()). Per sequence generation ends at a token of `stop_ids` (kept; later positions
// repeat it), for all at max_new_tokens or once every sequence has stopped. Returns int64 [B, generated] on the host.
// The device is asked whether every sequence stopped only every few tokens: a read per token would make the host
// wait for each token before it may queue the next (tokens past the last stop are cut off, so the result is the
// same).
torch::Tensor greedy_continue(DecodeStepper& stepper, torch::Tensor logits, int64_t max_new_tokens,
                              const std::vector<int64_t>& stop_ids, const std::function<ForwardOptions()>& options);

}  // namespace rtp::model
