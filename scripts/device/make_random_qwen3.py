"""On the GPU machine (transformers is there): a Qwen3 checkpoint with random bf16 weights, written by Hugging Face
transformers from one of the published configs in data/configs/, plus the real Qwen3 tokenizer.

Usage: python3 scripts/device/make_random_qwen3.py OUT_DIR [CONFIG_DIR (default data/configs/qwen3-0.6b)]
"""
import shutil
import sys

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

out = sys.argv[1]
config_dir = sys.argv[2] if len(sys.argv) > 2 else "data/configs/qwen3-0.6b"
cfg = Qwen3Config.from_json_file(f"{config_dir}/config.json")
torch.manual_seed(0)
model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out, safe_serialization=True)
shutil.copy("data/fixtures/tokenizer/qwen3/tokenizer.json", out)
print(f"random {config_dir} model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
      f"transformers {transformers.__version__}")
