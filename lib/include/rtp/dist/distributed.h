#pragma once
// Data-parallel plumbing over c10d: the torchrun / SLURM environment, rendezvous through TCPStore, a process group
// (NCCL for GPU ranks, Gloo on CPU), and the few collectives training needs. A world of one needs none of it.
#include <torch/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace rtp::dist {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  std::string source;  // "torchrun", "slurm" or "single"
  bool distributed() const { return world_size > 1; }
};

// torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); else SLURM's (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT still required); else a single process.
// Inconsistent or missing values are rtp::Error naming the variable.
DistEnv read_dist_env();

class ProcessGroup;

class Distributed {
 public:
  // Rendezvous (rank 0 hosts the TCPStore) and the process group; collectives give up after `timeout`. A CUDA
  // `device` (the rank's GPU, cuda:LOCAL_RANK) selects ProcessGroupNCCL where the build has it; else Gloo.
  Distributed(const DistEnv& env, std::chrono::milliseconds timeout, torch::Device device = torch::kCPU);
  ~Distributed();
  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }

  // Averages the tensors over ranks in place, as one flat bucket (one collective per call).
  void allreduce_mean(const std::vector<torch::Tensor>& tensors);
  double allreduce_mean(double value);
  // Copies rank `root`'s tensors to every rank, in place.
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  void barrier();

 private:
  DistEnv env_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<ProcessGroup> pg_;
};

bool distributed_available();  // built with a process-group backend

}  // namespace rtp::dist
