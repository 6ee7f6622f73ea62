#pragma once
// Attention of a one-token decode step, split so that a CUDA graph can hold the cache writes.
//
// A decode step's cache work has two parts with different needs. Storing the new token (its k/v in the cache, for
// the sparse cache also its index key, the indexer's queries, the ring slot) has fixed shapes: it can be captured
// with the layer's projections and replayed every step, provided it reads the position from a device buffer and
// writes to buffers that stay where they are. The attention call over the cache has shapes that grow with every
// token: eager, unless its kernel reads the length from device memory too (attend_token_on_device), and then the
// whole step is one graph. Eagerly, the store was a few dozen ATen calls per layer on the host (index gathers, two
// einsums, copies), which made a sparse step slower than a dense one at 4K-32K tokens although it reads less.
#include <torch/types.h>

#include <memory>

#include "rtp/model/attention_seam.h"

namespace rtp::model {

class StepAttention {
 public:
  virtual ~StepAttention() = default;

  // Eager, once per step before any layer: make room for the token at `position` (host value; every sequence of the
  // batch is at the same position). Returns an object that lives exactly as long as the buffers store_token writes
  // to: graphs captured with store_token stay valid while it does (a reallocation hands out a new one). A null result
  // says this step cannot take the split (e.g. a dense cache that holds nothing yet): the caller decodes it through
  // the ordinary forward path instead.
  virtual std::shared_ptr<const void> begin_step(int64_t position) = 0;

  // Captured with the layer (or run eagerly in the same place): store layer in.layer's token, read from `in` (one
  // token: q/k/v [B, H, 1, D]), at the position held in `position` (int64 [1] on the model's device). Reads no value on
  // the host; what it allocates must stay referenced until the next call for the layer (a graph replays into it).
  virtual void store_token(const LayerAttentionInputs& in, const torch::Tensor& position) = 0;

  // Where the layer's q/k/v projection may write the token itself, in its own launch, instead of store_token (the
  // model does where it can and says so in LayerAttentionInputs::token_stored): a cache whose store is a plain copy
  // of k and v rows into buffers that stay where they are. Asked after begin_step; undefined by default.
  virtual TokenSlot token_slot(int64_t layer, const torch::Tensor& position) const {
    (void)layer, (void)position;
    return {};
  }

  // Eager, after store_token for the same layer: the token's attention over everything stored so far (position + 1
  // tokens), written to `out` [B, Hq, 1, D] (the model's dtype, contiguous).
  virtual void attend_token(const LayerAttentionInputs& in, int64_t position, torch::Tensor& out) = 0;

  // The whole step in one graph. Leaving the graphs for every attention call cost some 16-19 us per layer on an H200
  // (docs/decode.md); a cache whose decode kernel reads the length from device memory can be captured with the
  // layers. attends_on_device: whether attend_token_on_device serves the steps of a model with `query_heads`
  // attention heads (asked after begin_step; the answer holds while begin_step's token does).
  virtual bool attends_on_device(int64_t query_heads) const {
    (void)query_heads;
    return false;
  }
  // Captured with the layer (or run eagerly in the same place) after store_token: attend_token's result, the position
  // read from `position` (int64 [1] on the model's device); reads no value on the host. Once every layer has run,
  // end_step(position) does the host's bookkeeping.
  virtual void attend_token_on_device(const LayerAttentionInputs& in, const torch::Tensor& position, torch::Tensor& out);
  virtual void end_step(int64_t position) { (void)position; }
};

}  // namespace rtp::model
