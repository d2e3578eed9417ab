"""Diversity balancing: a cap per k-means cluster of embeddings, and MetaCLIP-style concept balancing.

- `kmeans_balance`: `faiss.Kmeans` (seeded, one thread: deterministic) is trained on the image (or
  caption) embeddings of the first `fit_rows` input rows; every row is then assigned to its
  nearest centroid and at most `cap` rows per cluster are kept, the first ones in input order.
- `concept_balance` (MetaCLIP, Xu et al. 2023, arXiv:2309.16671, section 3.3): a concept list
  (the "metadata"; words or phrases) is matched against every caption (whole words, lower-cased,
  phrases up to the longest concept's length). A first pass counts the rows matching each concept
  over the whole input; a row then survives with probability 1 - prod_c (1 - min(1, cap / count_c))
  over its matched concepts (MetaCLIP's "keep if any of its entries samples it"), so head concepts
  are cut down to about `cap` rows while tail concepts keep every row. The draw is a uniform from
  (seed, the row's input index): deterministic, and the same after a resume.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmkit.curation.dedup import faiss_module
from vlmkit.curation.encoder import ModelRule
from vlmkit.curation.rules import RuleBase, check_range, register
from vlmkit.curation.rules_text import words
from vlmkit.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class KmeansConfig:
    model: str = ""  # an image-text checkpoint folder
    on: str = "image"  # embed the "image" or the "text"
    k: int = 16
    cap: int = 100  # rows kept per cluster
    fit_rows: int = 4096  # the first rows of the input train the centroids
    iterations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("kmeans_balance.model must name an image-text checkpoint folder")
        if self.on not in ("image", "text"):
            raise ConfigError(f"kmeans_balance.on must be image or text, got {self.on!r}")
        for name in ("k", "cap", "fit_rows", "iterations"):
            check_range(f"kmeans_balance.{name}", getattr(self, name), 1)


@register("kmeans_balance", KmeansConfig, "at most `cap` rows per k-means cluster of embeddings", "faiss-cpu")
class KmeansBalance(ModelRule):
    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.faiss = faiss_module()
        self.needs_image = config.on == "image"
        self.fit_rows = config.fit_rows
        self.centroids: np.ndarray | None = None  # [k, E]
        self.counts: Counter = Counter()

    def fit(self, rows: Iterable[dict]) -> None:
        x = self.embed_stream(rows, self.config.on)  # [N, E]
        if len(x) < self.config.k:
            raise ConfigError(f"kmeans_balance: {len(x)} rows cannot train k={self.config.k} clusters")
        threads = self.faiss.omp_get_max_threads()
        self.faiss.omp_set_num_threads(1)  # the same centroids on any machine load
        try:
            km = self.faiss.Kmeans(x.shape[1], self.config.k, niter=self.config.iterations,
                                   seed=self.config.seed, verbose=False)  # fmt: skip
            km.train(np.ascontiguousarray(x))
        finally:
            self.faiss.omp_set_num_threads(threads)
        self.centroids = np.asarray(km.centroids, np.float32)

    def fitted_state(self) -> dict:
        return {"centroids": self.centroids.tolist()}

    def load_fitted(self, state: dict) -> None:
        self.centroids = np.array(state["centroids"], np.float32)

    def score_batch(self, rows: list[dict]) -> list[int]:
        if not rows:
            return []
        x = self.encoder.encode(rows, self.config.on)  # [B, E]
        d = (x * x).sum(1, keepdims=True) - 2 * x @ self.centroids.T + (self.centroids**2).sum(1)  # [B, k]
        return [int(c) for c in d.argmin(1)]

    def keep(self, value: int) -> bool:
        self.counts[value] += 1
        return self.counts[value] <= self.config.cap

    def summary(self, value: int) -> str:
        return f"cluster {value:03d}"

    def save(self, folder: Path) -> None:
        (folder / "counts.json").write_text(json.dumps(sorted(self.counts.items())))

    def load(self, folder: Path) -> None:
        self.counts = Counter({int(k): v for k, v in json.loads((folder / "counts.json").read_text())})


@dataclass(kw_only=True, frozen=True)
class ConceptConfig:
    concepts: list[str] = field(default_factory=list)  # words / phrases (MetaCLIP's metadata)
    concepts_file: str = ""  # or a text file, one concept per line
    cap: int = 1000  # MetaCLIP's t: rows per concept kept in expectation
    keep_unmatched: bool = False  # MetaCLIP drops captions matching no concept
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("concept_balance.cap", self.cap, 1)


def _load_concepts(config: ConceptConfig) -> list[str]:
    concepts = list(config.concepts)
    if config.concepts_file:
        try:
            concepts += Path(config.concepts_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ConfigError(f"concept_balance.concepts_file {config.concepts_file}: {e.strerror}") from None
    concepts = sorted({" ".join(words(c)) for c in concepts} - {""})
    if not concepts:
        raise ConfigError("concept_balance needs concepts (a list) or concepts_file")
    return concepts


def uniform(seed: int, index: int) -> float:
    """A uniform in [0, 1) from (seed, index): the same on any machine, engine or resume."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@register("concept_balance", ConceptConfig, "MetaCLIP balancing: about `cap` rows per caption concept")
class ConceptBalance(RuleBase):
    measures = "keep probability"
    fit_rows = -1  # concept frequencies over the whole input

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.concepts = set(_load_concepts(config))
        self.longest = max(len(c.split()) for c in self.concepts)
        self.frequency: Counter = Counter()

    def matches(self, text: str) -> list[str]:
        """Concepts found in `text` as whole words or phrases, sorted."""
        w = words(text)
        grams = {" ".join(w[i : i + n]) for n in range(1, self.longest + 1) for i in range(len(w) - n + 1)}
        return sorted(grams & self.concepts)

    def fit(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.frequency.update(self.matches(row["text"]))

    def fitted_state(self) -> dict:
        return {"frequency": dict(sorted(self.frequency.items()))}

    def load_fitted(self, state: dict) -> None:
        self.frequency = Counter(state["frequency"])

    def score(self, row: dict) -> tuple[float, float, int]:
        """(keep probability, the row's uniform draw, number of matched concepts)."""
        found = self.matches(row["text"])
        miss = 1.0
        for c in found:
            miss *= 1.0 - min(1.0, self.config.cap / max(self.frequency[c], 1))
        return 1.0 - miss, uniform(self.config.seed, row["__index__"]), len(found)

    def keep(self, value: tuple[float, float, int]) -> bool:
        p, u, n = value
        return self.config.keep_unmatched if n == 0 else u < p

    def summary(self, value: tuple[float, float, int]) -> float:
        return value[0]
