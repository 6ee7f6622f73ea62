#!/usr/bin/env python3
"""Sums a Kineto (Chrome JSON) trace such as rtpurbo-bench-decode --trace-prefill writes: the traced span, GPU kernel
time (total and by kernel name), the gaps where no kernel ran, and the host's CUDA runtime calls by name (synchronising
copies and stream waits show up there), and the host ops each synchronising call ran inside. Usage: trace_summary.py TRACE.json [--top N]"""
import argparse
import collections
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
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


def waits(runtime, ops, top):
    """The host ops each synchronising runtime call ran inside (same thread, enclosing spans), outermost first: where
    the host waited for the GPU, by the chain of ops around it."""
    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy")
    calls = [e for e in runtime if e.get("name") in names]
    if not calls:
        return
    by_tid = collections.defaultdict(list)
    for e in ops:
        by_tid[e.get("tid")].append(e)
    by = collections.defaultdict(lambda: [0, 0.0])
    for c in calls:
        t = c["ts"]
        chain = sorted((e for e in by_tid.get(c.get("tid"), ()) if e["ts"] <= t and t + c["dur"] <= e["ts"] + e["dur"]),
                       key=lambda e: (e["ts"], -e["dur"]))
        key = c["name"] + " in " + (" > ".join(e.get("name", "?") for e in chain[-4:]) or "(no host op)")
        by[key][0] += 1
        by[key][1] += c["dur"]
    print("\nsynchronising calls by the host ops around them (innermost four): ms, count, chain")
    for key, (n, d) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{1e-3 * d:10.2f} {n:7d}  {key[:160]}")


if __name__ == "__main__":
    main()
