"""Generate a tiny random-weight Llama with a trained byte-level BPE tokenizer and a chat template.

It stands in for a real model when no hub and no GPU are available: the output is gibberish, but
vLLM loads it like any Hugging Face model. Runs under the vLLM venv (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# Bump when the shape, tokenizer or template changes, so existing caches are regenerated.
GENERATOR_VERSION = 2
STAMP_NAME = ".tinymodel-complete.json"
VOCAB_SIZE = 3072
TRAINING_TEXT_BYTES = 1_500_000
DEFAULT_MAX_POSITIONS = 4096
LM_HEAD_STD = 0.5


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    heads: int  # head_dim = hidden / heads: vLLM's CPU attention needs 64 or more
    kv_heads: int


# Named shapes. "tiny" (the default) is quick to load, for API tests; "prefill" (~10 M parameters)
# is big enough that prefill dominates a 3,000-token request on a CPU (the prefix-cache benchmark).
SHAPES = {
    "tiny": Shape(hidden=128, layers=2, intermediate=256, heads=2, kv_heads=1),
    "prefill": Shape(hidden=384, layers=6, intermediate=1024, heads=6, kv_heads=1),
}
DEFAULT_SHAPE = "tiny"

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


def _stamp(seed: int, max_positions: int, shape: str = DEFAULT_SHAPE) -> dict[str, int | str]:
    stamp: dict[str, int | str] = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "max_positions": max_positions,
    }
    if shape != DEFAULT_SHAPE:  # the default's stamp is unchanged: existing caches stay valid
        stamp["shape"] = shape
    return stamp


def is_complete(
    out_dir: Path, seed: int, max_positions: int = DEFAULT_MAX_POSITIONS, shape: str = DEFAULT_SHAPE
) -> bool:
    """True when `out_dir` holds a model made by this generator with these settings."""
    return stamp_matches(out_dir, _stamp(seed, max_positions, shape))


def stamp_matches(out_dir: Path, stamp: Mapping[str, object]) -> bool:
    """True when `out_dir` was completed with exactly this stamp (any stand-in generator).

    The stamp file is written last, so its presence means every other file is complete.
    """
    try:
        found = json.loads((out_dir / STAMP_NAME).read_text())
        return bool(found == dict(stamp))
    except (OSError, ValueError):
        return False


def write_atomically(
    out_dir: Path, stamp: Mapping[str, object], build: Callable[[Path], None]
) -> bool:
    """Run `build(tmp)` and move tmp to `out_dir` unless a matching stamp is already there.

    Builds in a sibling temporary directory and renames it into place, so a crash or a concurrent
    run never leaves a half-written directory that looks complete. Returns True when it built.
    """
    if stamp_matches(out_dir, stamp):
        return False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; containers may read it as another user
        (tmp / STAMP_NAME).write_text(json.dumps(dict(stamp)))
        if out_dir.exists() and not stamp_matches(out_dir, stamp):
            shutil.rmtree(out_dir)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Lost a race to a concurrent run: its result is as good as ours.
            if not stamp_matches(out_dir, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def training_text() -> Iterator[str]:
    """Python's own stdlib sources: always present locally, and fixed for a given interpreter."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    budget = TRAINING_TEXT_BYTES
    for path in sorted(stdlib.glob("*.py")):
        if budget <= 0:
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        budget -= len(text)
        yield text


def _build_tokenizer(out_dir: Path, max_positions: int) -> dict[str, int]:
    # Imported here (and untyped for the gateway venv's mypy, which lacks them) so that the stamp
    # check above stays importable anywhere.
    from tokenizers import (  # type: ignore[import-not-found,unused-ignore]
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        PreTrainedTokenizerFast,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_positions,
    )
    wrapped.save_pretrained(str(out_dir))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    ids["vocab_size"] = tokenizer.get_vocab_size()
    return ids


def _build_model(
    out_dir: Path, seed: int, max_positions: int, ids: dict[str, int], shape: Shape
) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=ids["vocab_size"],
        hidden_size=shape.hidden,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        num_hidden_layers=shape.layers,
        intermediate_size=shape.intermediate,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    model = LlamaForCausalLM(config)
    # With the default 0.02 init every next-token distribution is nearly uniform, so what is
    # sampled depends only on vLLM's sampler seed and two "different" models answer alike.
    # A wide output layer makes each model prefer its own tokens (greedy output differs by seed).
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, LM_HEAD_STD)
    model = model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir))
    generation = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[PAD],
    )
    generation.save_pretrained(str(out_dir))


def generate(
    out_dir: Path, seed: int, max_positions: int = DEFAULT_MAX_POSITIONS, shape: str = DEFAULT_SHAPE
) -> bool:
    """Write the model to `out_dir` unless already there; returns True when it generated one.

    `shape` names one of SHAPES.
    """

    def build(tmp: Path) -> None:
        ids = _build_tokenizer(tmp, max_positions)
        _build_model(tmp, seed, max_positions, ids, SHAPES[shape])

    return write_atomically(out_dir, _stamp(seed, max_positions, shape), build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tinymodel", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same model)")
    parser.add_argument(
        "--max-positions",
        type=int,
        default=DEFAULT_MAX_POSITIONS,
        help="max_position_embeddings: the longest --max-model-len vLLM will accept",
    )
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=DEFAULT_SHAPE,
        help="named model size (tiny: the default; prefill: ~10 M parameters, for benchmarks)",
    )
    args = parser.parse_args(argv)
    made = generate(args.out_dir, args.seed, args.max_positions, args.shape)
    state = "generated" if made else "already complete"
    print(f"{args.shape} model {state}: {args.out_dir} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
