"""Deduplication rules; the first occurrence (in input order) of each group is kept.

- `exact_dedup`: SHA-256 of the image bytes and/or the caption (whitespace-normalised, lower-cased);
  64 bits of it are kept per row (a false match among 10^6 rows has probability ~3e-8).
- `phash_dedup`: a perceptual hash (`imagehash` pHash or dHash, 64 bits) within Hamming
  distance `max_distance` of a kept hash. Lookup is exact and sub-linear by the pigeonhole
  principle: two hashes within distance d agree on at least one of d + 1 disjoint bands, so
  each kept hash is indexed under its d + 1 band values and only hashes sharing a band are
  compared.
- `embed_dedup`: cosine >= `threshold` between image embeddings of a checkpoint folder and any
  kept row's, through a growing FAISS index of the kept embeddings (`vlmkit.curation.embed_index`:
  exact flat, IVF or HNSW; float32, float16 or 8-bit storage; its docstring gives the memory per
  row). A batch is searched at once, then decided in order, each row also compared exactly with
  the rows kept earlier in its batch.

"Kept" means passed this rule: put dedup after the filters so that a removed row does not
shadow a later copy. State (hashes, the index) is saved at every checkpoint for exact resume.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.curation.embed_index import EmbedIndex, IndexConfig, dedup_batch, faiss_module  # noqa: F401
from vlmkit.curation.encoder import ModelRule
from vlmkit.curation.rules import RuleBase, check_range, image_bytes_of, image_of, register
from vlmkit.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class ExactConfig:
    on: str = "both"  # "image", "caption" or "both" (the same image with the same caption)

    def __post_init__(self) -> None:
        if self.on not in ("image", "caption", "both"):
            raise ConfigError(f"exact_dedup.on must be image, caption or both, got {self.on!r}")


@register("exact_dedup", ExactConfig, "no earlier row has the same image bytes / caption (content hash)")
class ExactDedup(RuleBase):
    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.needs_image = config.on != "caption"
        self.seen: set[int] = set()

    def score(self, row: dict) -> int:
        h = hashlib.sha256()
        if self.config.on in ("image", "both"):
            h.update(hashlib.sha256(image_bytes_of(row)).digest())
        if self.config.on in ("caption", "both"):
            h.update(" ".join(row["text"].lower().split()).encode())
        return int.from_bytes(h.digest()[:8], "little")

    def keep(self, value: int) -> bool:
        if value in self.seen:
            return False
        self.seen.add(value)
        return True

    def summary(self, value: int) -> None:
        return None

    def save(self, folder: Path) -> None:
        np.save(folder / "seen.npy", np.array(sorted(self.seen), dtype=np.uint64))

    def load(self, folder: Path) -> None:
        self.seen = {int(v) for v in np.load(folder / "seen.npy")}


@dataclass(kw_only=True, frozen=True)
class PhashConfig:
    hash: str = "phash"  # "phash" or "dhash"
    max_distance: int = 4  # Hamming distance (of 64 bits) that counts as the same image

    def __post_init__(self) -> None:
        if self.hash not in ("phash", "dhash"):
            raise ConfigError(f"phash_dedup.hash must be phash or dhash, got {self.hash!r}")
        check_range("phash_dedup.max_distance", self.max_distance, 0, 15)


def _bands(value: int, n: int) -> list[tuple[int, int]]:
    """(band, bits) of n disjoint bands covering the 64 bits."""
    edges = [64 * i // n for i in range(n + 1)]
    return [(i, (value >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]


@register("phash_dedup", PhashConfig, "no kept image within max_distance bits of perceptual hash", "imagehash")
class PhashDedup(RuleBase):
    needs_image = True

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        try:
            import imagehash
        except ImportError:
            raise ConfigError("rule phash_dedup needs imagehash: pip install 'vlmkit[curate]'") from None
        self.fn = imagehash.phash if config.hash == "phash" else imagehash.dhash
        self.kept: list[int] = []
        self.index: dict[tuple[int, int], list[int]] = defaultdict(list)

    def score(self, row: dict) -> int:
        bits = self.fn(image_of(row)).hash.flatten()  # 64 booleans
        return int("".join("1" if b else "0" for b in bits), 2)

    def nearest(self, value: int) -> int:
        """Hamming distance to the closest kept hash sharing a band (65 if none is within range)."""
        best = 65
        for band in _bands(value, self.config.max_distance + 1):
            for other in self.index.get(band, ()):
                best = min(best, (value ^ other).bit_count())
        return best

    def _add(self, value: int) -> None:
        self.kept.append(value)
        for band in _bands(value, self.config.max_distance + 1):
            self.index[band].append(value)

    def keep(self, value: int) -> bool:
        if self.nearest(value) <= self.config.max_distance:
            return False
        self._add(value)
        return True

    def summary(self, value: int) -> None:
        return None

    def save(self, folder: Path) -> None:
        np.save(folder / "kept.npy", np.array(self.kept, dtype=np.uint64))

    def load(self, folder: Path) -> None:
        self.kept, self.index = [], defaultdict(list)
        for v in np.load(folder / "kept.npy"):
            self._add(int(v))


@dataclass(kw_only=True, frozen=True)
class EmbedConfig(IndexConfig):
    model: str = ""  # an image-text checkpoint folder
    threshold: float = 0.95  # cosine at or above which two images are near-duplicates

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("embed_dedup.model must name an image-text checkpoint folder")
        check_range("embed_dedup.threshold", self.threshold, -1.0, 1.0)
        super().__post_init__()


@register("embed_dedup", EmbedConfig, "no kept image embedding with cosine >= threshold (FAISS)", "faiss-cpu")
class EmbedDedup(ModelRule):
    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.index = EmbedIndex(config)

    def score_batch(self, rows: list[dict]) -> list[np.ndarray]:
        return list(self.encoder.encode(rows, "image")) if rows else []

    def decide_batch(self, values: list[np.ndarray]) -> list[bool]:
        if not values:
            return []
        return dedup_batch(self.index, np.stack(values).astype(np.float32), self.config.threshold)  # [B, E]

    def summary(self, value: np.ndarray) -> None:
        return None

    def save(self, folder: Path) -> None:
        self.index.save(folder)

    def load(self, folder: Path) -> None:
        self.index.load(folder)
