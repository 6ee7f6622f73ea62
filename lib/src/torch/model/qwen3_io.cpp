#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/io/safetensors.h"
#include "rtp/model/parameter_layout.h"
#include "rtp/model/qwen3.h"
#include "rtp/torch/tensor_io.h"

namespace rtp::model {

namespace fs = std::filesystem;

namespace {

// Experts stored one by one on disk (the layout of the released Qwen3-MoE checkpoints) are stacked into the
// fused tensors the model holds.
torch::Tensor load_fused_experts(const io::SafetensorsDir& dir, const ModelConfig& c, const ParameterSpec& spec,
                                 torch::ScalarType dtype) {
  if (dir.contains(spec.name))
    return load_tensor(dir, spec.name, spec.shape, dtype, torch::kCPU, shape_reason(c, spec));
  const std::string pre = spec.name.substr(0, spec.name.rfind('.') + 1);  // "...mlp.experts."
  const bool gate_up = spec.name.size() >= 12 && spec.name.compare(spec.name.size() - 12, 12, "gate_up_proj") == 0;
  const int64_t H = c.hidden_size, I = c.moe_intermediate_size;
  std::vector<torch::Tensor> per_expert;
  per_expert.reserve(c.num_experts);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const std::string ep = pre + std::to_string(e) + ".";
    const std::string why = shape_reason(c, spec);
    if (gate_up) {
      auto g = load_tensor(dir, ep + "gate_proj.weight", {I, H}, dtype, torch::kCPU, why);
      auto u = load_tensor(dir, ep + "up_proj.weight", {I, H}, dtype, torch::kCPU, why);
      per_expert.push_back(torch::cat({g, u}, 0));
    } else {
      per_expert.push_back(load_tensor(dir, ep + "down_proj.weight", {H, I}, dtype, torch::kCPU, why));
    }
  }
  return torch::stack(per_expert, 0);
}

}  // namespace

Qwen3Model load_qwen3(const std::string& dir, torch::Device device, torch::ScalarType dtype) {
  require_directory(dir, "model directory", "(expected a Hugging Face checkpoint directory with config.json and "
                    "*.safetensors)");
  const std::string config_path = (fs::path(dir) / "config.json").string();
  RTP_CHECK(file_exists(config_path), "'", dir, "' has no config.json (expected a Hugging Face checkpoint directory)");
  ModelConfig cfg = load_model_config(config_path);
  io::SafetensorsDir weights(dir);
  // Built where it runs, filled one tensor at a time: host memory holds one tensor, not the model (a 30B
  // checkpoint is 120 GB in float32).
  Qwen3Model model(cfg, device, dtype);
  {
    torch::NoGradGuard no_grad;
    auto params = model.named_parameters();
    std::unordered_map<std::string, torch::Tensor> by_name(params.begin(), params.end());
    for (const auto& spec : parameter_layout(cfg)) {
      torch::Tensor t;
      if (spec.is_fused_experts) {
        t = load_fused_experts(weights, cfg, spec, torch::kFloat32);
      } else {
        t = load_tensor(weights, spec.name, spec.shape, torch::kFloat32, torch::kCPU, shape_reason(cfg, spec));
      }
      by_name.at(spec.name).copy_(t);
    }
  }
  return model;
}

Qwen3Model random_qwen3(const std::string& dir, torch::Device device, torch::ScalarType dtype, uint64_t seed,
                        double std) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  RTP_CHECK(file_exists(config_path), "model_init random: '", config_path, "' does not exist (expected the "
            "config.json of the architecture to build)");
  Qwen3Model model(load_model_config(config_path), device, dtype);
  model.init_random(seed, std);
  return model;
}

void save_qwen3(const Qwen3Model& model, const std::string& dir, torch::ScalarType dtype) {
  make_directories(dir);
  ModelConfig cfg = model.config();
  cfg.torch_dtype = dtype == torch::kBFloat16 ? "bfloat16" : (dtype == torch::kFloat16 ? "float16" : "float32");
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, t] : model.named_parameters()) {
    auto host = t.detach().to(torch::kCPU, dtype).contiguous();
    const bool fused_gate_up = name.find("experts.gate_up_proj") != std::string::npos;
    const bool fused_down = name.find("experts.down_proj") != std::string::npos;
    if (!fused_gate_up && !fused_down) {
      out.emplace_back(name, host);
      continue;
    }
    // On disk the experts go one by one, as the released Qwen3-MoE checkpoints have them.
    const std::string pre = name.substr(0, name.rfind('.') + 1);
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      const std::string ep = pre + std::to_string(e) + ".";
      if (fused_gate_up) {
        auto halves = host[e].chunk(2, 0);
        out.emplace_back(ep + "gate_proj.weight", halves[0].contiguous());
        out.emplace_back(ep + "up_proj.weight", halves[1].contiguous());
      } else {
        out.emplace_back(ep + "down_proj.weight", host[e].contiguous());
      }
    }
  }
  save_tensors((fs::path(dir) / "model.safetensors").string(), out, {{"format", "pt"}});
  write_json_atomic((fs::path(dir) / "config.json").string(), model_config_to_json(cfg));
}

}  // namespace rtp::model
