#!/usr/bin/env python3
"""scripts/device/trace_summary.py on a hand-made Kineto trace whose answers are known: GPU busy time (overlapping
kernels merged), the host ops around each synchronising call (nested, and none), the host ops around each kernel's
launch (by correlation id), and a clear error for a file that is not a trace."""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "device", "trace_summary.py")


def op(name, ts, dur, cat="cpu_op", tid=1, **args):
    e = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid}
    if args:
        e["args"] = args
    return e


def run(path, *extra):
    return subprocess.run([sys.executable, SCRIPT, path, *extra], capture_output=True, text=True)


def main():
    ms = 1000.0  # trace times are microseconds
    events = [
        op("outer", 0, 100 * ms), op("inner_b", 10 * ms, 20 * ms), op("inner_c", 40 * ms, 50 * ms),
        op("cudaLaunchKernel", 12 * ms, 1 * ms, cat="cuda_runtime", correlation=1),
        op("cudaLaunchKernel", 45 * ms, 1 * ms, cat="cuda_runtime", correlation=2),
        op("cudaStreamSynchronize", 50 * ms, 20 * ms, cat="cuda_runtime"),
        op("cudaStreamSynchronize", 150 * ms, 5 * ms, cat="cuda_runtime"),
        # kernels on the GPU's own thread: 20-30 and 25-55 overlap (35 ms busy), 200-210 alone: 45 ms of 190
        op("gatherK", 20 * ms, 10 * ms, cat="kernel", tid=7, correlation=1),
        op("copyK", 25 * ms, 30 * ms, cat="kernel", tid=7, correlation=2),
        op("loneK", 200 * ms, 10 * ms, cat="kernel", tid=7, correlation=99),
    ]
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        with open(path, "w") as f:
            json.dump({"traceEvents": events}, f)
        r = run(path, "--kernel-sources", "")
        out = r.stdout
        expect(r.returncode == 0, f"exit {r.returncode}: {r.stderr}")
        expect("GPU busy 45.0 ms of the 190.0 ms from first to last kernel (24%)" in out, "GPU busy line")
        expect("cudaStreamSynchronize in outer > inner_c" in out, "sync inside outer > inner_c")
        expect("cudaStreamSynchronize in (no host op)" in out, "sync outside every op")
        expect("gatherK  <-  outer > inner_b" in out, "gatherK's launch inside outer > inner_b")
        expect("copyK  <-  outer > inner_c" in out, "copyK's launch inside outer > inner_c")
        expect("loneK  <-  (no host op)" in out, "a kernel without a launch record")
        r = run(path, "--kernel-sources", "gather")
        expect("gatherK" in r.stdout and "copyK  <-" not in r.stdout, "--kernel-sources filters by name")
        bad = os.path.join(d, "bad.json")
        with open(bad, "w") as f:
            f.write("{not json")
        r = run(bad)
        expect(r.returncode != 0 and "bad.json" in r.stderr, f"bad input must fail naming the file: {r.stderr!r}")
        if failures:
            print(out)
    for f in failures:
        print("FAILED:", f)
    print("trace_summary_test:", "FAILED" if failures else "passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
