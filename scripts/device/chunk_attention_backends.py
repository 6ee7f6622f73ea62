#!/usr/bin/env python3
"""A prefill chunk's attention (the last tq of tk positions, bottom-right causal) per SDPA backend: which backends
take it, their time, and their difference from FlashAttention's output. Also the chunk split in two: its queries over the
keys before it (no mask) and over its own keys (square causal), merged by their log-sum-exps, each half by FlashAttention
or cuDNN (`split_*`). Writes JSON to the path given."""
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right


def median_ms(fn, reps=9):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[reps // 2]


def merge(o1, lse1, o2, lse2):
    """Two attention outputs over disjoint key sets as one: each weighted by its share of the whole softmax sum."""
    l1 = lse1.reshape(*lse1.shape[:3], 1).float()
    l2 = lse2.reshape(*lse2.shape[:3], 1).float()
    l = torch.logaddexp(l1, l2)
    return (o1.float() * torch.exp(l1 - l) + o2.float() * torch.exp(l2 - l)).to(o1.dtype)


def split_flash(q, k, v):
    tq, tk = q.shape[2], k.shape[2]
    o1, l1 = torch.ops.aten._scaled_dot_product_flash_attention(q, k[:, :, :tk - tq], v[:, :, :tk - tq], 0.0, False)[:2]
    o2, l2 = torch.ops.aten._scaled_dot_product_flash_attention(q, k[:, :, tk - tq:], v[:, :, tk - tq:], 0.0, True)[:2]
    return merge(o1, l1, o2, l2)


def split_cudnn(q, k, v, gqa):
    """cuDNN over each half; gqa: K/V with their own (fewer) heads as they are, else expanded by repeat_interleave."""
    tq, tk, g = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
    grow = (lambda x: x) if gqa else (lambda x: x.repeat_interleave(g, 1))
    def half(kk, vv, causal):
        r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, grow(kk), grow(vv), None, True, 0.0, causal, False)
        return r[0], r[1]
    o1, l1 = half(k[:, :, :tk - tq], v[:, :, :tk - tq], False)
    o2, l2 = half(k[:, :, tk - tq:], v[:, :, tk - tq:], True)
    return merge(o1, l1, o2, l2)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    dev = torch.device("cuda")
    rows = []
    torch.manual_seed(0)
    for name, hq, hkv in [("qwen3-8b", 32, 8), ("qwen3-30b-a3b", 32, 4)]:
        for tq, tk in [(4096, 8192), (4096, 16384), (4096, 32768), (3001, 35769)]:
            q = torch.randn(1, hq, tq, 128, device=dev, dtype=torch.bfloat16)
            k = torch.randn(1, hkv, tk, 128, device=dev, dtype=torch.bfloat16)
            v = torch.randn(1, hkv, tk, 128, device=dev, dtype=torch.bfloat16)
            g = hq // hkv
            ref = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)[0]
            t_flash = median_ms(lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True))
            ke, ve = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            mask = causal_lower_right(tq, tk)
            r = dict(shape=name, tq=tq, tk=tk, flash_ms=t_flash)
            for bname, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
                try:
                    with sdpa_kernel([be]):
                        call = lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)
                        got = call()
                        r[bname + "_ms"] = median_ms(call)
                        r[bname + "_max_diff_vs_flash"] = (got.float() - ref.float()).abs().max().item()
                except Exception as e:  # not taken by this backend
                    r[bname + "_error"] = str(e).splitlines()[0][:200]
            for sname, fn in [("split_flash", lambda: split_flash(q, k, v)),
                              ("split_cudnn_gqa", lambda: split_cudnn(q, k, v, True)),
                              ("split_cudnn_copy", lambda: split_cudnn(q, k, v, False))]:
                try:
                    torch.cuda.synchronize(); t = time.perf_counter()
                    got = fn(); torch.cuda.synchronize()
                    r[sname + "_first_call_ms"] = (time.perf_counter() - t) * 1e3  # cuDNN: its execution plans
                    r[sname + "_ms"] = median_ms(fn)
                    r[sname + "_max_diff_vs_flash"] = (got.float() - ref.float()).abs().max().item()
                except Exception as e:
                    r[sname + "_error"] = str(e).splitlines()[0][:200]
            print(r, flush=True)
            rows.append(r)
    res = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)
    if out:
        with open(out + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
