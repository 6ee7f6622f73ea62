#!/usr/bin/env python3
"""Greedy-generation references from Hugging Face transformers for the committed tiny model fixtures.

For each data/fixtures/models/<name>/ writes generation.safetensors with
  prompt_ids   int64 [B, P]    random prompts (fixed seed)
  output_ids   int64 [B, P+N]  model.generate(prompt_ids, do_sample=False, max_new_tokens=N), no stop token
Run where transformers is installed:  python3 scripts/gen_generation_fixtures.py
"""
import argparse
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

NAMES = ["qwen3-tiny", "qwen3-tiny-yarn-tied-bf16", "qwen3-moe-tiny", "qwen3-moe-tiny-noNorm"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="data/fixtures/models")
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--new-tokens", type=int, default=24)
    args = ap.parse_args()
    for i, name in enumerate(NAMES):
        d = os.path.join(args.root, name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        g = torch.Generator().manual_seed(args.seed + i)
        prompt = torch.randint(0, model.config.vocab_size, (2, 19), generator=g)
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 eos_token_id=None, pad_token_id=0)
        save_file({"prompt_ids": prompt.contiguous(), "output_ids": out.contiguous()},
                  os.path.join(d, "generation.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                            "generator": "scripts/gen_generation_fixtures.py"})
        print(name, out[:, prompt.shape[1]:].tolist()[0][:10])


if __name__ == "__main__":
    main()
