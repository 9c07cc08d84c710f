"""Generate a tiny random-weight Llama with a trained byte-level BPE tokenizer and a chat template.

It stands in for a real model when no hub and no GPU are available: the output is gibberish, but
vLLM loads it like any Hugging Face model. Runs under the vLLM venv (torch, transformers, tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Bump when the shape, tokenizer or template changes, so existing caches are regenerated.
GENERATOR_VERSION = 1
STAMP_NAME = ".tinymodel-complete.json"
VOCAB_SIZE = 3072
TRAINING_TEXT_BYTES = 1_500_000

ENDOFTEXT, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]
# ChatML models end a turn with <|im_end|>; making it the EOS stops generation at the turn's end.
BOS, EOS = ENDOFTEXT, IM_END

# ChatML, written with explicit string literals so Jinja whitespace control cannot eat the newlines.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _stamp(seed: int) -> dict[str, int]:
    return {"generator_version": GENERATOR_VERSION, "seed": seed}


def is_complete(out_dir: Path, seed: int) -> bool:
    """True when `out_dir` holds a model this generator made with this seed (stamp written last)."""
    try:
        return bool(json.loads((out_dir / STAMP_NAME).read_text()) == _stamp(seed))
    except (OSError, ValueError):
        return False


def _training_text() -> Iterator[str]:
    """Python's own stdlib sources: always present locally, and fixed for a given interpreter."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    budget = TRAINING_TEXT_BYTES
    for path in sorted(stdlib.glob("*.py")):
        if budget <= 0:
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        budget -= len(text)
        yield text


def _build_tokenizer(out_dir: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    wrapped.save_pretrained(str(out_dir))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    ids["vocab_size"] = tokenizer.get_vocab_size()
    return ids


def _build_model(out_dir: Path, seed: int, ids: dict[str, int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=ids["vocab_size"],
        hidden_size=128,
        num_attention_heads=2,  # head_dim 64: vLLM's CPU attention rejects smaller heads
        num_key_value_heads=1,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out_dir))
    generation = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[PAD],
    )
    generation.save_pretrained(str(out_dir))


def generate(out_dir: Path, seed: int) -> bool:
    """Write the model to `out_dir` unless already there; returns True when it generated one.

    Builds in a sibling temporary directory and renames it into place, so a crash or a concurrent
    run never leaves a half-written model that looks complete.
    """
    if is_complete(out_dir, seed):
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        ids = _build_tokenizer(tmp)
        _build_model(tmp, seed, ids)
        (tmp / STAMP_NAME).write_text(json.dumps(_stamp(seed)))
        if out_dir.exists() and not is_complete(out_dir, seed):
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir, seed):  # lost a race to another run: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tinymodel", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same model)")
    args = parser.parse_args(argv)
    made = generate(args.out_dir, args.seed)
    state = "generated" if made else "already complete"
    print(f"tiny model {state}: {args.out_dir} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
