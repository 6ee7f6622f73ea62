# Host and device time per call of the cache writes a decode step makes (eager), on the GPU machine.
import time, torch
dev = 'cuda'
def timed(f, n=200):
    for _ in range(5): f()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(n): f()
    t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
    return 'host %.1f us/call, total %.1f us/call' % ((t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6)
for cap in (4224, 32992):
    k = torch.randn(1, 8, cap, 128, device=dev, dtype=torch.bfloat16)
    src = torch.randn(1, 8, 1, 128, device=dev, dtype=torch.bfloat16)
    pos = torch.tensor([cap - 20], device=dev)
    print(cap, 'dense index_copy_ dim 2:', timed(lambda: k.index_copy_(2, pos, src)))
    print(cap, 'dense narrow copy_:', timed(lambda: k.narrow(2, cap - 20, 1).copy_(src)))
    f = torch.randn(2, cap, 128, device=dev, dtype=torch.bfloat16)
    s2 = torch.randn(2, 1, 128, device=dev, dtype=torch.bfloat16)
    print(cap, 'sparse index_copy_ dim 1:', timed(lambda: f.index_copy_(1, pos, s2)))
    print(cap, 'sparse narrow copy_:', timed(lambda: f.narrow(1, cap - 20, 1).copy_(s2)))
