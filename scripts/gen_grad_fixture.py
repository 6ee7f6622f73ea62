# Gradient-parity fixture: Hugging Face Qwen3ForCausalLM (transformers, fp32, CPU, eager attention) loads the
# committed qwen3-tiny fixture, computes the mean next-token cross-entropy of random ids, and stores the ids, the
# loss and the gradient of every parameter. tests/model/qwen3_grad_parity_test.cpp compares our backward with it.
#   python3 scripts/gen_grad_fixture.py data/fixtures/models/qwen3-tiny
import sys, torch
from safetensors.torch import save_file
from transformers import Qwen3ForCausalLM
d = sys.argv[1]
torch.manual_seed(5)
m = Qwen3ForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
m.train()
V = m.config.vocab_size
ids = torch.randint(0, V, (2, 37))
logits = m(ids).logits
loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
loss.backward()
out = {"input_ids": ids, "loss": loss.detach().reshape(1)}
for n, p in m.named_parameters():
    out["grad." + n] = p.grad.contiguous()
save_file(out, d + "/gradients.safetensors")
print("loss", loss.item(), "tensors", len(out))
