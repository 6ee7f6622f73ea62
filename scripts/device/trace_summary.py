#!/usr/bin/env python3
"""Sums a Kineto (Chrome JSON) trace such as rtpurbo-bench-decode --trace-prefill writes: the traced span, GPU kernel
time (total and by kernel name), the gaps where no kernel ran, and the host's CUDA runtime calls by name (synchronising
copies and stream waits show up there), and the host ops each synchronising call ran inside. Usage: trace_summary.py TRACE.json [--top N] [--kernel-sources TEXT]"""
import argparse
import collections
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    ap.add_argument("--kernel-sources", metavar="TEXT",
                    help="for kernels whose name contains TEXT ('' for all), the host ops their launches ran inside")
    a = ap.parse_args()
    try:
        with open(a.trace) as f:
            events = json.load(f).get("traceEvents", [])
    except (OSError, ValueError) as e:
        sys.exit(f"trace_summary: cannot read '{a.trace}' as Chrome trace JSON: {e}")
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if not spans:
        sys.exit(f"trace_summary: '{a.trace}' holds no complete ('X') events")
    kernels = [e for e in spans if e.get("cat") == "kernel"]
    runtime = [e for e in spans if e.get("cat") in ("cuda_runtime", "cuda_driver")]
    ops = [e for e in spans if e.get("cat") == "cpu_op"]
    t0 = min(e["ts"] for e in spans)
    t1 = max(e["ts"] + e["dur"] for e in spans)
    print(f"span {1e-3 * (t1 - t0):.1f} ms, {len(kernels)} kernels, {len(runtime)} runtime calls, {len(ops)} host ops")
    if kernels:
        busy, end = 0.0, None
        for e in sorted(kernels, key=lambda e: e["ts"]):
            s, f = e["ts"], e["ts"] + e["dur"]
            if end is None or s > end:
                busy += e["dur"]
                end = f
            elif f > end:
                busy += f - end
                end = f
        k0 = min(e["ts"] for e in kernels)
        k1 = max(e["ts"] + e["dur"] for e in kernels)
        print(f"GPU busy {1e-3 * busy:.1f} ms of the {1e-3 * (k1 - k0):.1f} ms from first to last kernel "
              f"({100 * busy / max(k1 - k0, 1e-9):.0f}%)")
    for title, rows in (("kernels", kernels), ("CUDA runtime calls", runtime), ("host ops (inclusive)", ops)):
        by = collections.defaultdict(lambda: [0, 0.0])
        for e in rows:
            by[e.get("name", "?")][0] += 1
            by[e.get("name", "?")][1] += e["dur"]
        print(f"\n{title}: ms, count, name")
        for name, (n, d) in sorted(by.items(), key=lambda kv: -kv[1][1])[: a.top]:
            print(f"{1e-3 * d:10.2f} {n:7d}  {name[:110]}")
    waits(runtime, ops, a.top)
    if a.kernel_sources is not None:
        kernel_sources(kernels, runtime, ops, a.kernel_sources, a.top)


def waits(runtime, ops, top):
    """The host ops each synchronising runtime call ran inside (same thread, enclosing spans), outermost first: where
    the host waited for the GPU, by the chain of ops around it."""
    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy")
    calls = [e for e in runtime if e.get("name") in names]
    if not calls:
        return
    by = collections.defaultdict(lambda: [0, 0.0])
    for c, chain in zip(calls, enclosing_chains(ops, calls)):
        key = c["name"] + " in " + (" > ".join(e.get("name", "?") for e in chain[-4:]) or "(no host op)")
        by[key][0] += 1
        by[key][1] += c["dur"]
    print("\nsynchronising calls by the host ops around them (innermost four): ms, count, chain")
    for key, (n, d) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{1e-3 * d:10.2f} {n:7d}  {key[:160]}")


def enclosing_chains(ops, events):
    """For each event, the host ops on its thread whose spans hold it, outermost first: one sweep per thread over the
    ops in start order with a stack of the open ones (host ops nest)."""
    by_tid = collections.defaultdict(list)
    for o in ops:
        by_tid[o.get("tid")].append(o)
    queries = collections.defaultdict(list)
    for i, e in enumerate(events):
        queries[e.get("tid")].append(i)
    chains = [[] for _ in events]
    for tid, idx in queries.items():
        opened = sorted(by_tid.get(tid, ()), key=lambda o: (o["ts"], -o["dur"]))
        idx.sort(key=lambda i: events[i]["ts"])
        stack, k = [], 0
        for i in idx:
            t, d = events[i]["ts"], events[i].get("dur", 0)
            while k < len(opened) and opened[k]["ts"] <= t:
                o = opened[k]
                while stack and stack[-1]["ts"] + stack[-1]["dur"] < o["ts"]:
                    stack.pop()
                stack.append(o)
                k += 1
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < t:
                stack.pop()
            chains[i] = [o for o in stack if o["ts"] + o["dur"] >= t + d]
    return chains


def kernel_sources(kernels, runtime, ops, text, top):
    """Kernel time by the host ops around each kernel's launch (the launch's runtime call and the kernel share a
    correlation id): which op of the model a gather or copy kernel comes from."""
    launch = {}
    for r in runtime:
        c = r.get("args", {}).get("correlation")
        if c is not None:
            launch[c] = r
    picked = [(k, launch.get(k.get("args", {}).get("correlation"))) for k in kernels if text in k.get("name", "?")]
    launches = [r for _, r in picked if r]
    chain_of = dict(zip(map(id, launches), enclosing_chains(ops, launches)))
    by = collections.defaultdict(lambda: [0, 0.0])
    for k, r in picked:
        name = k.get("name", "?")
        chain = chain_of.get(id(r), []) if r else []
        names = [o.get("name", "?") for o in chain]
        where = " > ".join(names[:2] + (["..."] if len(names) > 4 else []) + names[max(2, len(names) - 2):])
        key = f"{name[:60]}  <-  {where or '(no host op)'}"
        by[key][0] += 1
        by[key][1] += k["dur"]
    print(f"\nkernels containing '{text}' by the host ops around their launch (outer two ... inner two): ms, count")
    for key, (n, d) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{1e-3 * d:10.2f} {n:7d}  {key[:200]}")


if __name__ == "__main__":
    main()
