# Diagnostic (docs/status.md): Hugging Face Qwen3 trained on the exact batches rtpurbo-train's pretrain stage sees,
# to compare the two trainers' loss and copy_ce step by step. The model shape, optimizer and schedule below match
# the C++ diagnostic's flags (2 layers, hidden 128, 4/2 heads x 32, vocab 512, AdamW 0.9/0.95, wd 0.1, lr 1e-3
# after 50 warm-up steps, clip 1):
#   rtpurbo-train --recipe recipes/toy-pretrain.yaml <the same shape and data flags> --steps 900 --dump-data d.st
#   python3 scripts/diagnostics/hf_on_dump.py d.st [VOCAB_SIZE (default 512)]
import torch, sys, time
from safetensors.torch import load_file
from transformers import Qwen3Config, Qwen3ForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
d = load_file(sys.argv[1]); X = d["input_ids"]; CM = d["copy_mask"].bool(); B = 32
V, T = int(sys.argv[2]) if len(sys.argv) > 2 else 512, X.shape[1]
cfg = Qwen3Config(vocab_size=V, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
                  tie_word_embeddings=False, initializer_range=0.02, attn_implementation="sdpa")
m = Qwen3ForCausalLM(cfg)
decay = [p for n, p in m.named_parameters() if p.dim() >= 2]; nodecay = [p for n, p in m.named_parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
t0 = time.time()
for step in range(1, X.shape[0] // B + 1):
    for g in opt.param_groups: g["lr"] = 1e-3 * min(1, step / 50)
    x = X[(step - 1) * B: step * B]; cm = CM[(step - 1) * B: step * B, :-1]
    ce = torch.nn.functional.cross_entropy(m(x).logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1), reduction="none").view(B, T - 1)
    loss = ce.mean(); opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    if step % 50 == 0: print(f"step {step} loss {loss.item():.4f} copy_ce {ce[cm].mean().item():.4f} {time.time()-t0:.0f}s", flush=True)
