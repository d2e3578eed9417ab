"""From a manifest to training batches: a resumable batch stream and a small tokenizer builder.

`BatchStream` pulls samples from a `ShuffledStream` (deterministic, rank-split, resumable) and
turns each group of `micro_batch_size` samples into model inputs with the PaliGemma processor,
padded on the right (training never generates, so prompts need not end at the last column).
Epochs roll over inside a batch; the stream's `state_dict` is the exact resume point.

`build_small_tokenizer` trains a tiny SentencePiece BPE (byte fallback, so any text encodes) on
the manifest's prompts and targets, in the PaliGemma layout (loc/seg/`<image>` tokens; see
`vlmkit.data.tokenizer_train`). It gives preset models trained from scratch (smoke runs,
tests) a vocabulary of ~1.5k ids instead of 257k.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from vlmkit.data.datasets import JsonlDataset, ShuffledStream, is_shard_source, shard_texts
from vlmkit.data.processor import PaliGemmaProcessor
from vlmkit.data.tokenizer_train import train_paligemma_tokenizer
from vlmkit.errors import DataError
from vlmkit.weights.safetensors_io import atomic_folder

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values")


def collate(samples: list[dict], processor: PaliGemmaProcessor) -> dict[str, torch.Tensor]:
    """Samples ({"image", "prefix", "suffix", ...}) -> input_ids/attention_mask/token_type_ids/
    labels int64 [B, T] (right-padded; labels -100 on image, prefix and padding) and
    pixel_values float32 [M, 3, H, W]."""
    batch = processor([s["prefix"] for s in samples], [s["image"] for s in samples],
                      suffixes=[s["suffix"] for s in samples], padding_side="right")
    return {k: batch[k] for k in BATCH_KEYS}


class BatchStream:
    """Endless micro-batches of one rank's share of the data, resumable at the exact sample.

    Samples become a batch with `collate_fn` (e.g. a `vlmkit.training.chat.ChatCollator`) or, by
    default, PaliGemma's prefix/suffix `collate` with `processor`."""

    def __init__(self, stream: ShuffledStream, processor: PaliGemmaProcessor | None, micro_batch_size: int,
                 collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None):
        self.stream, self.processor, self.micro_batch_size = stream, processor, micro_batch_size
        self.collate_fn = collate_fn
        self._it: Iterator[dict] | None = None

    def _next_sample(self) -> dict:
        for _ in range(2):  # at most one epoch boundary per sample
            if self._it is None:
                self._it = iter(self.stream)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise DataError("the data stream yields no samples for this rank (dataset smaller than world size?)")

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Samples -> one micro-batch; subclasses for other model inputs override only this."""
        return collate(samples, self.processor) if self.collate_fn is None else self.collate_fn(samples)

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.collate([self._next_sample() for _ in range(self.micro_batch_size)])

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self._it = None  # the next sample comes from a fresh iterator at the loaded position

    def load_resplit_state(self, states: list[dict]) -> None:
        """Resume from every rank's state of a run with another number of ranks."""
        self.stream.load_resplit_state(states)
        self._it = None


def eval_batches(dataset: JsonlDataset, to_batch: Callable[[list[dict]], dict], batch_size: int,
                 max_batches: int, rank: int = 0, world_size: int = 1) -> Iterator[dict]:
    """This rank's first `max_batches` batches of `dataset` in file order (rows rank::world_size),
    collated with `to_batch` (samples -> batch, e.g. `BatchStream.collate`).

    Every rank gets the same number of batches (rows beyond a multiple of world_size are left
    out): under FSDP each forward is a collective, so unequal counts would hang.
    """
    n = len(dataset) - len(dataset) % world_size
    rows = list(range(rank, n, world_size))[: max_batches * batch_size]
    for i in range(0, len(rows), batch_size):
        yield to_batch([dataset[j] for j in rows[i:i + batch_size]])


def manifest_texts(manifest: str | Path) -> list[str]:
    """Prefixes and suffixes of a JSONL manifest's (or tar shards') well-formed rows (for
    tokenizer training)."""
    if is_shard_source(manifest):
        texts = shard_texts(manifest)
        if not texts:
            raise DataError(f"tar shards {manifest} have no text to train a tokenizer on")
        return texts
    texts = []
    try:
        lines = Path(manifest).read_bytes().splitlines()
    except OSError as e:
        raise DataError(f"cannot read manifest {manifest} ({e.strerror})") from None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # also bad UTF-8: the dataset reports such rows by line
            continue
        if isinstance(row, dict):
            texts += [row[k] for k in ("prefix", "suffix") if isinstance(row.get(k), str)]
    if not texts:
        raise DataError(f"manifest {manifest} has no text to train a tokenizer on")
    return texts


def build_small_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 320) -> Path:
    """Train a small PaliGemma-layout tokenizer (`train_paligemma_tokenizer`) on `texts` and
    write it to `out_dir`. Deterministic for the same texts."""
    # Location / segmentation tokens are added by the PaliGemma layout; BPE merges of their
    # spelling ("<loc0") would only waste the small vocabulary.
    words = [w for w in (re.sub(r"<(loc\d{4}|seg\d{3})>", " ", t).strip() for t in texts) if w]
    # Atomic: a run killed while writing leaves no half folder that a resume would take as built.
    with atomic_folder(out_dir) as tmp:
        train_paligemma_tokenizer(tmp, words, vocab_size)
    return Path(out_dir)
