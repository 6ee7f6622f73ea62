#include "rtp/dist/distributed.h"

#include <torch/torch.h>

#include <cstdlib>

#include "rtp/core/error.h"

// A process-group backend: Gloo (CPU ranks; GPU ranks through host copies) and/or NCCL (GPU ranks).
#if defined(RTPURBO_WITH_GLOO) || defined(RTPURBO_WITH_NCCL)
#define RTP_HAS_C10D 1
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef RTPURBO_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef RTPURBO_WITH_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace rtp::dist {

namespace {

// c10 errors carry a C++ backtrace in what(); users need the message.
std::string message_of(const std::exception& e) {
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

int env_int(const char* name, const char* value, int lo, int hi) {
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  RTP_CHECK(end && *end == '\0' && v >= lo && v <= hi, "environment variable ", name, "='", value,
            "' must be an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

}  // namespace

DistEnv read_dist_env() {
  DistEnv e;
  const char* rank = env_or_null("RANK");
  const char* world = env_or_null("WORLD_SIZE");
  if (rank || world) {
    RTP_CHECK(rank && world, "torchrun environment incomplete: RANK and WORLD_SIZE must both be set (found ",
              rank ? "RANK" : "WORLD_SIZE", " only)");
    e.source = "torchrun";
    e.world_size = env_int("WORLD_SIZE", world, 1, 1 << 20);
    e.rank = env_int("RANK", rank, 0, e.world_size - 1);
    if (const char* lr = env_or_null("LOCAL_RANK")) e.local_rank = env_int("LOCAL_RANK", lr, 0, 1 << 20);
  } else if (const char* procid = env_or_null("SLURM_PROCID")) {
    const char* ntasks = env_or_null("SLURM_NTASKS");
    RTP_CHECK(ntasks, "SLURM_PROCID is set but SLURM_NTASKS is not");
    e.source = "slurm";
    e.world_size = env_int("SLURM_NTASKS", ntasks, 1, 1 << 20);
    e.rank = env_int("SLURM_PROCID", procid, 0, e.world_size - 1);
    if (const char* lid = env_or_null("SLURM_LOCALID")) e.local_rank = env_int("SLURM_LOCALID", lid, 0, 1 << 20);
  } else {
    e.source = "single";
    return e;
  }
  if (e.world_size > 1) {
    const char* addr = env_or_null("MASTER_ADDR");
    const char* port = env_or_null("MASTER_PORT");
    RTP_CHECK(addr, "WORLD_SIZE=", e.world_size, " (", e.source, ") but MASTER_ADDR is not set: give the address of ",
              "rank 0 (torchrun sets it; under SLURM export it, e.g. the first host of SLURM_JOB_NODELIST)");
    RTP_CHECK(port, "WORLD_SIZE=", e.world_size, " but MASTER_PORT is not set: give a free TCP port on rank 0's host");
    e.master_addr = addr;
    e.master_port = env_int("MASTER_PORT", port, 1, 65535);
  }
  return e;
}

#ifdef RTP_HAS_C10D
class ProcessGroup {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;  // ProcessGroupNCCL on GPUs (when built with NCCL), else ProcessGroupGloo
  bool nccl = false;
  bool failed = false;  // a collective failed or timed out: peers may be gone, so abort rather than shut down
  torch::Device device = torch::kCPU;  // where collective buffers live: the rank's GPU for NCCL, else the CPU
  // NCCL communicators must be shut down before exit (else a resource-leak warning, and a hang risk when a peer is
  // gone); errors are swallowed since this runs in a destructor, possibly while another error unwinds.
  ~ProcessGroup() {
    if (!pg) return;
    try {
      if (failed)
        pg->abort();
      else
        pg->shutdown();
    } catch (...) {
    }
  }
};
bool distributed_available() { return true; }
#else
class ProcessGroup {};
bool distributed_available() { return false; }
#endif

Distributed::Distributed(const DistEnv& env, std::chrono::milliseconds timeout, torch::Device device)
    : env_(env), timeout_(timeout) {
  if (!env.distributed()) return;
#ifdef RTP_HAS_C10D
  pg_ = std::make_unique<ProcessGroup>();
#ifdef RTPURBO_WITH_NCCL
  if (device.is_cuda()) {
    const int n = static_cast<int>(c10::cuda::device_count());
    RTP_CHECK(device.has_index() && device.index() < n, "rank ", env.rank, ": LOCAL_RANK=", env.local_rank,
              " needs GPU ", device.index(), " but ", n, " CUDA device(s) are visible (one rank per GPU: lower ",
              "--nproc-per-node or check CUDA_VISIBLE_DEVICES)");
    c10::cuda::set_device(device.index());
    pg_->nccl = true;
    pg_->device = device;
  }
#else
  if (device.is_cuda() && env.rank == 0)
    std::cerr << "distributed: this build has no NCCL (nccl.h not found at configure time); GPU gradients are "
                 "averaged over Gloo through host memory\n";
#endif
#ifndef RTPURBO_WITH_GLOO
  RTP_CHECK(pg_->nccl, "rank ", env.rank, ": WORLD_SIZE=", env.world_size, " on the CPU needs the Gloo backend, which ",
            "this build lacks: install libgloo-dev and rebuild (scripts/setup.sh does both), or train on GPUs (NCCL)");
#endif
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.timeout = timeout;
  try {
    pg_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
#ifdef RTPURBO_WITH_NCCL
    if (pg_->nccl) {
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_->store, env.rank, env.world_size, opts);
    }
#endif
#ifdef RTPURBO_WITH_GLOO
    if (!pg_->nccl) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      pg_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_->store, env.rank, env.world_size, opts);
    }
#endif
  } catch (const std::exception& e) {
    RTP_THROW("rank ", env.rank, " of ", env.world_size, ": rendezvous at ", env.master_addr, ":", env.master_port,
              " failed within ", timeout.count() / 1000, " s (did every rank start, with the same WORLD_SIZE?): ", message_of(e));
  }
#else
  RTP_THROW("WORLD_SIZE=", env.world_size, " but this build has no process-group backend: install libgloo-dev and "
            "rebuild (scripts/setup.sh does both)");
#endif
}

Distributed::~Distributed() = default;

#ifdef RTP_HAS_C10D
namespace {
template <typename F>
void collective(ProcessGroup& pg, const DistEnv& env, std::chrono::milliseconds timeout, const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    pg.failed = true;
    RTP_THROW("rank ", env.rank, " of ", env.world_size, ": ", what, " failed or timed out after ", timeout.count() / 1000,
              " s; another rank probably died or hangs (", message_of(e), ")");
  }
}
}  // namespace
#endif

void Distributed::allreduce_mean(const std::vector<torch::Tensor>& tensors) {
  if (!env_.distributed() || tensors.empty()) return;
#ifdef RTP_HAS_C10D
  std::vector<torch::Tensor> flat_parts;
  // One fp32 bucket on the backend's device (the GPU itself for NCCL: no host round trip).
  for (const auto& t : tensors) flat_parts.push_back(t.detach().reshape(-1).to(pg_->device, torch::kFloat32));
  std::vector<at::Tensor> bucket{torch::cat(flat_parts)};
  collective(*pg_, env_, timeout_, "allreduce", [&] { pg_->pg->allreduce(bucket)->wait(timeout_); });
  bucket[0].div_(env_.world_size);
  int64_t offset = 0;
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    t.copy_(bucket[0].narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
#endif
}

double Distributed::allreduce_mean(double value) {
  if (!env_.distributed()) return value;
#ifdef RTP_HAS_C10D
  auto t = torch::tensor({value}, torch::TensorOptions(torch::kFloat64).device(pg_->device));
#else
  auto t = torch::tensor({value}, torch::kFloat64);
#endif
  allreduce_mean(std::vector<torch::Tensor>{t});
  return t.item<double>();
}

void Distributed::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  if (!env_.distributed()) return;
#ifdef RTP_HAS_C10D
  for (const auto& t : tensors) {
    std::vector<at::Tensor> one{t.detach().to(pg_->device).contiguous()};
    c10d::BroadcastOptions bo;
    bo.rootRank = root;
    collective(*pg_, env_, timeout_, "broadcast", [&] { pg_->pg->broadcast(one, bo)->wait(timeout_); });
    torch::NoGradGuard no_grad;
    t.copy_(one[0]);
  }
#endif
}

void Distributed::barrier() {
  if (!env_.distributed()) return;
#ifdef RTP_HAS_C10D
  c10d::BarrierOptions bo;
  if (pg_->nccl) bo.device_ids = {static_cast<int64_t>(pg_->device.index())};
  collective(*pg_, env_, timeout_, "barrier", [&] { pg_->pg->barrier(bo)->wait(timeout_); });
#endif
}

}  // namespace rtp::dist
