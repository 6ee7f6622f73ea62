#include "rtp/eval/logits_task.h"

#include <torch/torch.h>

#include <iostream>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/io/safetensors.h"
#include "rtp/model/model_config.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"

namespace rtp::eval {

void run_logits_task(const LogitsTaskOptions& o, const RunContext& ctx) {
  io::SafetensorsFile input(o.input_path);
  const io::TensorInfo* info = input.find("input_ids");
  RTP_CHECK(info != nullptr, "'", o.input_path, "' has no tensor 'input_ids' (expected int64 [B, T])");
  RTP_CHECK(info->dtype == io::DType::I64 && info->shape.size() == 2, "'", o.input_path,
            "': tensor 'input_ids' must be int64 [B, T], found ", io::dtype_name(info->dtype), " with ",
            info->shape.size(), " dimensions");
  RTP_CHECK(info->shape[0] >= 1 && info->shape[1] >= 1, "'", o.input_path, "': tensor 'input_ids' has shape [",
            info->shape[0], ", ", info->shape[1], "]: expected at least one sequence of at least one token");
  // Before the model loads: a sequence longer than the model's positions is refused at once.
  require_directory(o.model_dir, "model directory");
  const model::ModelConfig cfg = model::load_model_config(o.model_dir + "/config.json");
  model::check_fits_positions(cfg, info->shape[1], str_cat("'", o.input_path, "': input_ids of length"));
  auto ids = read_tensor(input, *info, torch::kInt64, torch::kCPU);
  auto model = model::load_qwen3(o.model_dir, ctx.device, ctx.dtype);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < ids.size(0); b += o.batch_chunk) {
    const int64_t n = std::min(o.batch_chunk, ids.size(0) - b);
    parts.push_back(model.forward(ids.narrow(0, b, n)).cpu());
    std::cerr << "logits: " << b + n << "/" << ids.size(0) << " sequences\n";
  }
  auto logits = parts.empty() ? torch::empty({0, ids.size(1), model.config().vocab_size}) : torch::cat(parts, 0);
  save_tensors(o.output_path, {{"logits", logits}}, {{"model", o.model_dir}, {"dtype", dtype_name(ctx.dtype)}});
}

}  // namespace rtp::eval
