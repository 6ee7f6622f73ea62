# Diagnostic for the toy pretraining (docs/status.md): does Hugging Face Qwen3, at the small shape of the C++
# diagnostic, learn induction on 160-token sequences with one 64-token span copied later? Prints the CE of the
# copied tokens (copy_ce) against the rest. CPU, one thread, transformers >= 4.51.
#   python3 scripts/diagnostics/hf_induction.py STEPS            # uniform random filler
#   python3 scripts/diagnostics/hf_induction.py STEPS BRANCHING  # Markov filler (248 tokens, BRANCHING successors
#                                                                # with exponential weights), the span copies filler
import torch, math, sys, time
from transformers import Qwen3Config, Qwen3ForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
V, T, S, B = 512, 160, 64, 32
cfg = Qwen3Config(vocab_size=V, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
                  tie_word_embeddings=False, initializer_range=0.02, attn_implementation="sdpa")
m = Qwen3ForCausalLM(cfg)
decay = [p for n, p in m.named_parameters() if p.dim() >= 2]; nodecay = [p for n, p in m.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 600
MARKOV = len(sys.argv) > 2
F, BR = 248, int(sys.argv[2]) if MARKOV else 0
g = torch.Generator().manual_seed(7)
succ = torch.randint(8, 8 + F, (F, max(BR, 1)), generator=g)
wts = torch.distributions.Exponential(1.0).sample((F, max(BR, 1)))
def filler(n):
    out = torch.empty(n, dtype=torch.long); t = int(torch.randint(8, 8 + F, (1,)))
    for i in range(n):
        out[i] = t; j = int(torch.multinomial(wts[t - 8], 1)); t = int(succ[t - 8, j])
    return out
def batch():
    x = torch.stack([filler(T) for _ in range(B)]) if MARKOV else torch.randint(8, V, (B, T))
    src = torch.randint(1, T - 2 * S, (B,))
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        s = int(src[b]); d = s + S + int(torch.randint(0, T - (s + 2 * S) + 1, (1,)))
        x[b, d:d + S] = x[b, s:s + S]; mask[b, d + 1:d + S] = True
    return x, mask
t0 = time.time()
for step in range(1, steps + 1):
    lr = 1e-3 * min(1, step / 50)
    for g in opt.param_groups: g["lr"] = lr
    x, mask = batch()
    logits = m(x).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1), reduction="none").view(B, T - 1)
    loss = ce.mean(); opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    if step % 50 == 0:
        cm = ce[mask[:, 1:]].mean().item()
        print(f"step {step} loss {loss.item():.3f} copy_ce {cm:.3f} other_ce {ce[~mask[:,1:]].mean().item():.3f} {time.time()-t0:.0f}s", flush=True)
