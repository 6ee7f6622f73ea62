#!/usr/bin/env python3
"""First-call and steady-state time of causal self-attention (a whole prompt, tq == tk) for prompt lengths never seen
before in the process, per SDPA backend: what a prefill of a new prompt length pays where DenseAttention hands it to
SDPA (cuDNN builds an execution plan per new shape). Writes JSON to the path given (default stdout)."""
import json, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3

def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    dev = torch.device("cuda")
    rows = []
    # 128 first: library loading and the CUDA context land there. (name, Hq, Hkv, D): Qwen3-0.6B and Qwen3-30B-A3B attention shapes.
    shapes = [("qwen3-0.6b", 16, 8, 128), ("qwen3-30b-a3b", 32, 4, 128)]
    backends = [("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]
    lengths = [128, 1000, 1001, 1002, 2049, 3001, 4095, 8191]
    torch.manual_seed(0)
    for name, hq, hkv, d in shapes:
        for bname, be in backends:
            for T in lengths:
                q = torch.randn(1, hq, T, d, device=dev, dtype=torch.bfloat16)
                k = torch.randn(1, hkv, T, d, device=dev, dtype=torch.bfloat16)
                v = torch.randn(1, hkv, T, d, device=dev, dtype=torch.bfloat16)
                g = hq // hkv
                def call():
                    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
                    if be is None:
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
                    with sdpa_kernel([be]):
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
                # Each backend sees a length first for (name, backend): the shapes differ per model, and cuDNN's plan
                # cache is keyed by shape, so a length is new for a backend the first time that backend runs it.
                first = timed(call)
                steady = sorted(timed(call) for _ in range(7))[3]
                rows.append(dict(shape=name, backend=bname, T=T, first_ms=first, steady_ms=steady))
                print(f"{name:14s} {bname:8s} T {T:5d}: first {first:9.2f} ms, steady {steady:7.3f} ms", flush=True)
    res = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)
    if out:
        with open(out + ".tmp", "w") as f: json.dump(res, f, indent=1)
        import os; os.replace(out + ".tmp", out)

if __name__ == "__main__":
    main()
