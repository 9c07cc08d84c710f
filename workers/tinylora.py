"""Generate a random LoRA adapter (peft's format) for a stand-in chat model of workers.tinymodel.

vLLM loads it with --lora-modules or /v1/load_lora_adapter like any adapter. Its weights are
random and large enough that the adapter's greedy answer differs from the base model's. Runs under
the vLLM venv (torch, transformers, peft).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers.tinymodel import write_atomically

GENERATOR_VERSION = 1
DEFAULT_RANK = 8
# Attention and MLP projections of the Llama stand-in, as most published adapters target.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# peft's own initialisation keeps B at zero (the adapter starts as a no-op); wide random A and B
# make the adapter change the base model's answers.
WEIGHT_STD = 0.2


def _stamp(base_dir: Path, seed: int, rank: int) -> dict[str, object]:
    base_config = json.loads((base_dir / "config.json").read_text())
    shape = {k: base_config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size")}
    return {
        "generator": "tinylora",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "rank": rank,
        "base_shape": shape,
    }


def _build(out_dir: Path, base_dir: Path, seed: int, rank: int) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from peft import LoraConfig, get_peft_model  # type: ignore[import-not-found,unused-ignore]
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        AutoModelForCausalLM,
    )

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, WEIGHT_STD)
    model.save_pretrained(str(out_dir))


def generate(out_dir: Path, base_dir: Path, seed: int, rank: int = DEFAULT_RANK) -> bool:
    """Write the adapter to `out_dir` unless already there; returns True when it generated one.

    `base_dir` is the stand-in model the adapter is for (it must exist already).
    """
    return write_atomically(
        out_dir,
        _stamp(base_dir, seed, rank),
        lambda tmp: _build(tmp, base_dir, seed, rank),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tinylora", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write the adapter into")
    parser.add_argument("--base", type=Path, required=True, help="the stand-in model's directory")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same adapter)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="LoRA rank (r)")
    args = parser.parse_args(argv)
    made = generate(args.out_dir, args.base, args.seed, args.rank)
    state = "generated" if made else "already complete"
    print(f"LoRA adapter {state}: {args.out_dir} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
