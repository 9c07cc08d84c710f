"""Generate a tiny random-weight BERT embedding model, shaped like BAAI/bge-small-en-v1.5.

It stands in for an embedding model when no hub is reachable: vLLM serves it with
`--runner pooling` (embeddings, score and rerank by cosine similarity, tokenize). Like bge, it
pools the [CLS] token and normalizes (sentence-transformers' modules.json and 1_Pooling/config.json,
which vLLM reads). Runs under the vLLM venv (torch, transformers, tokenizers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers.tinymodel import training_text, write_atomically

GENERATOR_VERSION = 1
VOCAB_SIZE = 3072
MAX_POSITIONS = 512  # bge-small's context
HIDDEN = 128
LAYERS = 2
HEADS = 2  # head_dim 64: vLLM's CPU attention needs 64 or more
INTERMEDIATE = 256
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _stamp(seed: int) -> dict[str, object]:
    return {"generator": "tinyembed", "generator_version": GENERATOR_VERSION, "seed": seed}


def _build_tokenizer(out_dir: Path) -> int:
    # Imported here (untyped for the gateway venv's mypy, which lacks them).
    from tokenizers import (  # type: ignore[import-not-found,unused-ignore]
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        PreTrainedTokenizerFast,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))  # noqa: S106 - not a password
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    names = ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
    roles = dict(zip(names, ("[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"), strict=True))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=MAX_POSITIONS, **roles
    )
    wrapped.save_pretrained(str(out_dir))
    vocab_size: int = tokenizer.get_vocab_size()
    return vocab_size


def _build_model(out_dir: Path, seed: int, vocab_size: int) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import BertConfig, BertModel  # type: ignore[import-not-found,unused-ignore]

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(str(out_dir))


def _write_pooling_config(out_dir: Path) -> None:
    """bge's sentence-transformers pipeline: [CLS] pooling, then L2 normalization."""
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = out_dir / "1_Pooling"
    pooling.mkdir()
    settings = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": True}
    settings |= {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}
    (pooling / "config.json").write_text(json.dumps(settings, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_POSITIONS, "do_lower_case": True})
    )


def generate(out_dir: Path, seed: int) -> bool:
    """Write the model to `out_dir` unless already there; returns True when it generated one."""

    def build(tmp: Path) -> None:
        vocab_size = _build_tokenizer(tmp)
        _build_model(tmp, seed, vocab_size)
        _write_pooling_config(tmp)

    return write_atomically(out_dir, _stamp(seed), build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tinyembed", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same model)")
    args = parser.parse_args(argv)
    made = generate(args.out_dir, args.seed)
    state = "generated" if made else "already complete"
    print(f"embedding model {state}: {args.out_dir} (seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
