"""Train a small PaliGemma-layout tokenizer from text, offline.

Real checkpoints bring their own tokenizer; models trained here (debug checkpoints, the bundled
model) need one that works on a fresh machine without downloads. We train a SentencePiece BPE
model with byte fallback (so any text encodes) on the given texts, then give it the PaliGemma
layout (<pad>/<eos>/<bos>/<unk>, loc, seg and <image> tokens) with `build_paligemma_tokenizer`.
A small vocabulary keeps the embedding table, the largest tensor of a tiny model, small.
"""

import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from vlmkit.data.tokenizer_build import build_paligemma_tokenizer

# Enough English for a general-purpose debug tokenizer; callers pass their own corpus.
DEFAULT_CORPUS = (
    "a photo of a cat sitting on a red sofa next to a small dog",
    "what color is the car ? the car is blue",
    "how many people are in the picture ? there are three people",
    "detect cat ; dog",
    "caption en",
    "answer en where is the ball ? on the left",
    "ocr the quick brown fox jumps over the lazy dog 0123456789",
    "segment person",
    "describe en a long description of a sunny street with trees and houses",
)


def train_base_spm(texts: Iterable[str], out_path: Path, vocab_size: int = 512) -> Path:
    """Train a SentencePiece BPE model with byte fallback on `texts`; write it to `out_path`.

    `vocab_size` counts the 256 byte pieces and SentencePiece's three specials, so it must be
    at least 262. Deterministic for the same texts and size (single-threaded training).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, hard_vocab_limit=False, minloglevel=2,
    )
    out_path.write_bytes(model.getvalue())
    return out_path


def train_paligemma_tokenizer(out_dir: Path, texts: Iterable[str] = DEFAULT_CORPUS,
                              vocab_size: int = 512) -> Path:
    """Train a base model on `texts` and write a PaliGemma-layout tokenizer folder to `out_dir`."""
    with tempfile.TemporaryDirectory() as tmp:
        base = train_base_spm(texts, Path(tmp) / "base.model", vocab_size)
        return build_paligemma_tokenizer(base, Path(out_dir))
