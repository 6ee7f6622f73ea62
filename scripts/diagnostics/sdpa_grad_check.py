# Diagnostic (GPU machine): are the forward and the gradients of SDPA, called the way the model calls it (causal,
# enable_gqa, q/k/v transposed views of [B, T, H, D]), right for each backend in bf16? Reference: float64 math on
# the same inputs with K/V repeated per group. Prints max |err| relative to max |ref| per tensor.
import torch, torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
torch.manual_seed(0)
B, T, Hq, Hkv, D = 4, 1024, 8, 4, 64
def inputs():
    q = torch.randn(B, T, Hq, D, device="cuda") * 2
    k = torch.randn(B, T, Hkv, D, device="cuda") * 2
    v = torch.randn(B, T, Hkv, D, device="cuda")
    go = torch.randn(B, Hq, T, D, device="cuda")
    return q, k, v, go
q0, k0, v0, go = inputs()
def ref():
    q = q0.double().transpose(1, 2).requires_grad_(); k = k0.double().transpose(1, 2).requires_grad_()
    v = v0.double().transpose(1, 2).requires_grad_()
    kk = k.repeat_interleave(Hq // Hkv, 1); vv = v.repeat_interleave(Hq // Hkv, 1)
    s = (q @ kk.transpose(-1, -2)) / D ** 0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    o = s.softmax(-1) @ vv
    o.backward(go.double())
    return o, q.grad, k.grad, v.grad
R = ref()
def run(backend, gqa, dtype):
    # clone: .to() of a tensor already in dtype returns it, and its .grad would accumulate across runs
    q = q0.to(dtype).clone().requires_grad_(); k = k0.to(dtype).clone().requires_grad_(); v = v0.to(dtype).clone().requires_grad_()
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if not gqa:
        kt = kt.repeat_interleave(Hq // Hkv, 1); vt = vt.repeat_interleave(Hq // Hkv, 1)
    with sdpa_kernel([backend]):
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
    o.backward(go.to(dtype))
    return o, q.grad.transpose(1, 2), k.grad.transpose(1, 2), v.grad.transpose(1, 2)
for dtype in (torch.bfloat16, torch.float32):
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        for gqa in (True, False):
            try:
                out = run(backend, gqa, dtype)
                errs = [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(out, R)]
                print(f"{str(dtype):15s} {backend.name:20s} gqa={gqa!s:5s} rel err o {errs[0]:.2e} dq {errs[1]:.2e} dk {errs[2]:.2e} dv {errs[3]:.2e}")
            except Exception as e:
                print(f"{str(dtype):15s} {backend.name:20s} gqa={gqa!s:5s} not available: {str(e).splitlines()[0][:90]}")
# What the default (no sdpa_kernel restriction) picks for bf16 GQA causal:
q = q0.bfloat16().transpose(1, 2); k = k0.bfloat16().transpose(1, 2); v = v0.bfloat16().transpose(1, 2)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
print("default bf16 kernels:", sorted({e.name[:60] for e in prof.events() if e.device_type.name == "CUDA"})[:6])
