#!/usr/bin/env python3
"""Writes small random Qwen3 / Qwen3-MoE checkpoints with Hugging Face transformers, plus reference logits.

Each fixture directory under data/fixtures/models/<name>/ holds a checkpoint exactly as save_pretrained writes it
and reference.safetensors with:
  input_ids      int64 [B, T]
  logits         float32 [B, T, V]   HF forward in float32 (eager attention)
  logits_hf_bf16 float32 [B, T, V]   HF forward with the model cast to bfloat16 (CPU), for the bf16 tolerance

Run where transformers is installed (the GPU machine has it; so does `pip install transformers==5.17.0`):
    python3 scripts/gen_model_fixtures.py --out data/fixtures/models
The variants cover both config spellings, sharded and single files, tied embeddings, YaRN, bf16 storage,
MoE with decoder_sparse_step / mlp_only_layers / norm_topk_prob.
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM


def dense_config(**kw):
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-6,
                rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False)
    base.update(kw)
    return base


def moe_config(**kw):
    base = dense_config(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=48, decoder_sparse_step=1,
                        norm_topk_prob=True, mlp_only_layers=[])
    base.update(kw)
    return base


VARIANTS = {
    # name: (config class, model class, config kwargs, save dtype, max_shard_size, rewrite config to old spelling)
    "qwen3-tiny": (Qwen3Config, Qwen3ForCausalLM, dense_config(), torch.float32, "100KB", False),
    "qwen3-tiny-yarn-tied-bf16": (
        Qwen3Config, Qwen3ForCausalLM,
        dense_config(tie_word_embeddings=True, attention_bias=True,
                     rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
        torch.bfloat16, None, False),
    "qwen3-moe-tiny": (
        Qwen3MoeConfig, Qwen3MoeForCausalLM,
        moe_config(decoder_sparse_step=2, mlp_only_layers=[2], num_hidden_layers=4, norm_topk_prob=True),
        torch.float32, None, True),
    "qwen3-moe-tiny-noNorm": (
        Qwen3MoeConfig, Qwen3MoeForCausalLM, moe_config(norm_topk_prob=False, num_hidden_layers=2),
        torch.float16, "200KB", False),
}


def to_old_spelling(cfg_path):
    """Rewrites config.json in the older spelling (rope_theta at top level, num_experts)."""
    with open(cfg_path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rp.get("rope_theta", c.get("rope_theta", 10000.0))
    c["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if "num_local_experts" in c:
        c["num_experts"] = c.pop("num_local_experts")
    with open(cfg_path, "w") as f:
        json.dump(c, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="data/fixtures/models")
    ap.add_argument("--seed", type=int, default=20261128)
    args = ap.parse_args()
    for idx, (name, (cfg_cls, model_cls, kw, save_dtype, shard, old)) in enumerate(VARIANTS.items()):
        torch.manual_seed(args.seed + idx)
        cfg = cfg_cls(**kw)
        cfg._attn_implementation = "eager"
        model = model_cls(cfg).eval()
        # Random norms and biases too, so that a loader which skips them fails the comparison.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.dim() == 1:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p)) if "norm" in n else p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.08 * torch.randn_like(p))
        model = model.to(save_dtype)
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        kwargs = {"safe_serialization": True}
        if shard:
            kwargs["max_shard_size"] = shard
        model.save_pretrained(d, **kwargs)
        for extra in ("generation_config.json",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        if old:
            to_old_spelling(os.path.join(d, "config.json"))
        g = torch.Generator().manual_seed(args.seed + 100 + idx)
        ids = torch.randint(0, cfg.vocab_size, (2, 37), generator=g)
        with torch.no_grad():
            # Reload rather than upcast the model in memory: .to(bf16) would also round the RoPE inv_freq buffer.
            m32 = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
            logits = m32(input_ids=ids).logits.float()
            m16 = model_cls.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").eval()
            logits_bf16 = m16(input_ids=ids).logits.float()
        save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
                   "logits_hf_bf16": logits_bf16.contiguous()},
                  os.path.join(d, "reference.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                            "generator": "scripts/gen_model_fixtures.py"})
        print(f"{name}: {sorted(os.listdir(d))} max|logit|={logits.abs().max():.3f} "
              f"bf16 err={(logits_bf16 - logits).abs().max():.4f}")


if __name__ == "__main__":
    main()
