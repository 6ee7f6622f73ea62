#include "rtp/train/checkpoint.h"

#include <torch/torch.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "rtp/core/error.h"
#include "rtp/core/file_io.h"
#include "rtp/torch/tensor_io.h"

namespace rtp::train {

namespace {

// Names in a directory (not . and ..), and whether each is a directory. POSIX rather than std::filesystem:
// libtorch.so exports its own std::filesystem symbols, and calls resolved to them have crashed (remove_all).
std::vector<std::pair<std::string, bool>> list_dir(const std::string& dir) {
  std::vector<std::pair<std::string, bool>> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st {};
    const bool is_dir = ::lstat((dir + "/" + n).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    out.emplace_back(n, is_dir);
  }
  ::closedir(d);
  return out;
}

}  // namespace

void remove_directory_tree(const std::string& path) { remove_tree(path); }

namespace {
std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}
}  // namespace

const std::vector<std::string>& resume_tolerant_fields() {
  // Neither the data nor the updates depend on these: how often to log, evaluate and save, where to stop and
  // write, how long a rank waits, which device (and its attention backend) runs it, the dtype of the final
  // export. `steps` is tolerated too, so that a finished or stopped run can be extended; the learning-rate
  // schedule then follows the new total from the resumed step on (check_resume_config says so).
  static const std::vector<std::string> f = {
      "resume",   "stop_at_step", "log_every",      "save_every",   "eval_every", "eval_samples", "keep_checkpoints",
      "device",   "out_dir",      "dist_timeout_s", "sdpa_backend", "save_dtype", "steps"};
  return f;
}

void check_resume_config(const std::string& dir, const TrainConfig& stored, const TrainConfig& now) {
  const auto& reg = train_config_registry();
  const auto& tol = resume_tolerant_fields();
  std::string diff;
  for (const auto& name : reg.differences(stored, now)) {
    if (std::find(tol.begin(), tol.end(), name) != tol.end()) continue;
    diff += str_cat(diff.empty() ? "" : ", ", name, " (checkpoint ", reg.find(name)->get(stored), ", now ",
                    reg.find(name)->get(now), ")");
  }
  RTP_CHECK(diff.empty(), "--resume from '", dir, "': the config differs from the run that wrote it in ", diff,
            "; resuming would not continue the same run (use another out_dir to start a new one)");
  if (stored.steps != now.steps)
    std::fprintf(stderr, "note: steps changed from %lld (checkpoint) to %lld: the learning-rate schedule follows the "
                 "new total from here on\n", static_cast<long long>(stored.steps), static_cast<long long>(now.steps));
}

namespace {
// Modification time in nanoseconds, or -1 if `path` does not exist.
int64_t mtime_ns(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
}
}  // namespace

void check_fresh_start(const std::string& out_dir, const std::string& final_artifact) {
  const std::string root = out_dir + "/checkpoints";
  const std::string latest = root + "/latest";
  if (!file_exists(latest)) return;
  std::string name = read_text_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ' || name.back() == '\r')) name.pop_back();
  const int64_t done = mtime_ns(final_artifact);
  if (done >= 0 && done >= mtime_ns(latest)) {
    std::fprintf(stderr, "note: '%s' holds a finished run (%s); starting over replaces it: its checkpoints are "
                 "removed\n", out_dir.c_str(), final_artifact.c_str());
    remove_directory_tree(root);
    return;
  }
  RTP_THROW("out_dir '", out_dir, "' already holds checkpoints of a run that did not finish (latest: ", name,
            "): pass --resume to continue it, or choose another out_dir (or remove '", out_dir, "')");
}

std::string save_checkpoint(const std::string& out_dir, const NamedParams& params, torch::optim::AdamW& optimizer,
                            const CheckpointState& state, int64_t keep) {
  const std::string root = out_dir + "/checkpoints";
  make_directories(root);
  remove_stale_temporaries(root, "step-");  // checkpoints of an interrupted save (a killed run)
  const std::string final_dir = root + "/" + step_name(state.step);
  const std::string tmp_dir = temporary_path_for(final_dir);
  make_directories(tmp_dir);

  NamedParams model_tensors, opt_tensors;
  nlohmann::json adam_steps = nlohmann::json::object();
  auto& st = optimizer.state();
  for (const auto& [name, p] : params) {
    model_tensors.emplace_back(name, p.detach());
    auto it = st.find(p.unsafeGetTensorImpl());
    if (it == st.end()) continue;  // no step taken for this parameter yet
    auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
    opt_tensors.emplace_back(name + ".exp_avg", s.exp_avg());
    opt_tensors.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq());
    adam_steps[name] = s.step();
  }
  save_tensors(tmp_dir + "/model.safetensors", model_tensors, {{"format", "pt"}});
  save_tensors(tmp_dir + "/optimizer.safetensors", opt_tensors);

  const auto& reg = train_config_registry();
  nlohmann::json cfg = nlohmann::json::object();
  for (const auto& f : reg.fields()) cfg[f.name] = f.get(state.config);
  nlohmann::json j = {{"format", kCheckpointFormat},     {"version", kCheckpointVersion},
                      {"step", state.step},              {"data_cursor", state.data_cursor},
                      {"seed", state.seed},              {"adam_steps", adam_steps},
                      {"config", cfg},                   {"config_yaml", reg.to_yaml(state.config, false)}};
  if (!state.run_state.is_null()) j["run_state"] = state.run_state;
  write_json_atomic(tmp_dir + "/state.json", j);

  remove_directory_tree(final_dir);
  commit_temporary(tmp_dir, final_dir);
  write_file_atomic(root + "/latest", step_name(state.step) + "\n");

  // Prune: keep the newest `keep` step-* directories (never the one just written).
  std::vector<std::string> dirs;
  for (const auto& [n, is_dir] : list_dir(root))
    if (is_dir && n.rfind("step-", 0) == 0 && n.find(".tmp.") == std::string::npos) dirs.push_back(n);
  std::sort(dirs.begin(), dirs.end());
  for (size_t i = 0; i + static_cast<size_t>(std::max<int64_t>(keep, 1)) < dirs.size(); ++i)
    if (dirs[i] != step_name(state.step)) remove_directory_tree(root + "/" + dirs[i]);
  return final_dir;
}

std::optional<std::string> latest_checkpoint(const std::string& out_dir) {
  const std::string root = out_dir + "/checkpoints";
  if (!file_exists(root + "/latest")) return std::nullopt;
  std::string name = read_text_file(root + "/latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ' || name.back() == '\r')) name.pop_back();
  const std::string dir = root + "/" + name;
  RTP_CHECK(directory_exists(dir), "'", root, "/latest' names '", name, "', which does not exist");
  return dir;
}

nlohmann::json checkpoint_run_state(const std::string& dir) {
  const nlohmann::json j = read_json_file(dir + "/state.json");
  return j.is_object() && j.contains("run_state") ? j["run_state"] : nlohmann::json();
}

CheckpointState load_checkpoint(const std::string& dir, const NamedParams& params, torch::optim::AdamW& optimizer) {
  const nlohmann::json j = read_json_file(dir + "/state.json");
  RTP_CHECK(j.value("format", "") == kCheckpointFormat, "'", dir, "/state.json': expected format '",
            kCheckpointFormat, "', found '", j.value("format", ""), "'");
  RTP_CHECK(j.value("version", 0) == kCheckpointVersion, "'", dir, "/state.json': expected version ",
            kCheckpointVersion, ", found ", j.value("version", 0));
  CheckpointState state;
  state.step = j.at("step").get<int64_t>();
  state.data_cursor = j.at("data_cursor").get<int64_t>();
  state.seed = j.at("seed").get<uint64_t>();
  if (j.contains("run_state")) state.run_state = j["run_state"];
  const auto& reg = train_config_registry();
  for (const auto& [k, v] : j.at("config").items()) {
    // Fields added after the checkpoint was written keep their defaults; unknown ones (removed) are ignored.
    if (const auto* f = reg.find(k)) f->set(state.config, v.get<std::string>(), str_cat("checkpoint '", dir, "'"));
  }

  std::unordered_map<std::string, torch::Tensor> model_t, opt_t;
  for (auto& [n, t] : read_all_tensors(dir + "/model.safetensors")) model_t.emplace(n, t);
  for (auto& [n, t] : read_all_tensors(dir + "/optimizer.safetensors")) opt_t.emplace(n, t);
  const nlohmann::json& adam_steps = j.at("adam_steps");

  torch::NoGradGuard no_grad;
  auto& st = optimizer.state();
  for (const auto& [name, p] : params) {
    auto it = model_t.find(name);
    RTP_CHECK(it != model_t.end(), "checkpoint '", dir, "/model.safetensors' lacks parameter '", name, "'");
    RTP_CHECK(it->second.sizes() == p.sizes(), "checkpoint '", dir, "': parameter '", name, "' has shape ",
              it->second.sizes(), ", the model expects ", p.sizes());
    p.copy_(it->second);
    if (!adam_steps.contains(name)) continue;
    auto a = opt_t.find(name + ".exp_avg");
    auto b = opt_t.find(name + ".exp_avg_sq");
    RTP_CHECK(a != opt_t.end() && b != opt_t.end(), "checkpoint '", dir, "/optimizer.safetensors' lacks the AdamW ",
              "moments of '", name, "'");
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(adam_steps.at(name).get<int64_t>());
    s->exp_avg(a->second.to(p.device(), p.scalar_type()).contiguous());
    s->exp_avg_sq(b->second.to(p.device(), p.scalar_type()).contiguous());
    st[p.unsafeGetTensorImpl()] = std::move(s);
  }
  return state;
}

void start_step_log(const std::string& log_path, int64_t step) {
  if (step == 0 || !file_exists(log_path)) {
    write_file_atomic(log_path, "");
    return;
  }
  const std::string text = read_text_file(log_path);
  std::string kept;
  size_t dropped = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool keep = complete && j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
                      j["step"].get<int64_t>() <= step;
    if (keep) kept += line + "\n";
    else ++dropped;
  }
  if (dropped > 0) {
    write_file_atomic(log_path, kept);
    std::fprintf(stderr, "note: %s: %zu line(s) after step %lld (logged after the checkpoint) removed; the resumed "
                 "run logs those steps again\n", log_path.c_str(), dropped, static_cast<long long>(step));
  }
}

}  // namespace rtp::train
