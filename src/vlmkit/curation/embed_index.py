"""The growing FAISS index behind `embed_dedup`: exact, IVF or HNSW, float32 / float16 / 8-bit storage.

Axes: B rows of a batch, E embedding width, N rows in the index.

Rows are L2-normalised embeddings, so an inner product is a cosine. The index only grows: a batch
is searched (best cosine of each row against every row added before), then its kept rows are added.

Kinds (`index`) and storage (`storage`), as FAISS index-factory strings:

| index | storage float32 | float16 | sq8 | search |
|---|---|---|---|---|
| flat | ``Flat`` (exact) | ``SQfp16`` | ``SQ8`` | every row |
| ivf  | ``IVF{nlist},Flat`` | ``IVF{nlist},SQfp16`` | ``IVF{nlist},SQ8`` | the `nprobe` closest of `nlist` cells |
| hnsw | ``HNSW{hnsw_m}`` | ``HNSW{hnsw_m},SQfp16`` | ``HNSW{hnsw_m},SQ8`` | graph walk, `ef_search` candidates |

Training. IVF (its k-means cells) and sq8 (its per-dimension range) need training data. Until
`train_rows` rows were added, the index is an exact float32 `IndexFlatIP` holding them (so a run
shorter than that is exact); then the configured index is trained on those first `train_rows`
rows, they are added to it, and the exact buffer is dropped. Kinds that need no training
(flat float32 / float16, hnsw float32 / float16) start as the configured index.

Memory per indexed row, E = embedding width (the index is most of a dedup run's memory):

- storage: float32 4E bytes, float16 2E, sq8 E (E = 512: 2048 / 1024 / 512 bytes);
- ivf adds an 8-byte id per row, plus nlist * 4E bytes of centroids once;
- hnsw adds its links, about 8 * hnsw_m bytes per row (level 0 holds 2 * hnsw_m int32 ids, the
  upper levels 1/hnsw_m as many per level) plus ~12 bytes of offsets and levels;
- while training: the buffer, train_rows * 4E bytes (65536 rows at E = 512: 128 MiB), freed after;
- per batch: B * 4E bytes of embeddings and a B x B float32 similarity matrix.

Determinism. The same rows in the same order give the same index and the same answers: k-means is
seeded (FAISS' fixed seed) and trained on one thread, HNSW insertion runs on one thread (parallel
insertion makes the graph depend on thread timing), and searches are independent per query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.curation.rules import check_range
from vlmkit.errors import ConfigError

KINDS = ("flat", "ivf", "hnsw")
STORAGE = {"float32": "Flat", "float16": "SQfp16", "sq8": "SQ8"}


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise ConfigError("embedding rules need faiss-cpu: pip install 'vlmkit[curate]'") from None
    return faiss


@contextmanager
def one_thread(faiss) -> Iterator[None]:
    """FAISS on one OpenMP thread inside the block (results independent of the machine's load)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass(kw_only=True, frozen=True)
class IndexConfig:
    """The index fields of the `embed_dedup` rule's table (see the module docstring)."""

    index: str = "ivf"  # "flat" (exact), "ivf" or "hnsw"
    storage: str = "float32"  # "float32", "float16" or "sq8" (FAISS scalar quantizer, 1 byte per dim)
    nlist: int = 2048  # ivf: k-means cells (~2 sqrt(rows) for 10^6 rows)
    nprobe: int = 16  # ivf: cells searched per row
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 40  # hnsw: candidates while inserting
    ef_search: int = 64  # hnsw: candidates while searching
    train_rows: int = 65536  # ivf / sq8: rows searched exactly, then trained on (first rows kept)

    def __post_init__(self) -> None:
        if self.index not in KINDS:
            raise ConfigError(f"embed_dedup.index must be flat, ivf or hnsw, got {self.index!r}")
        if self.storage not in STORAGE:
            raise ConfigError(f"embed_dedup.storage must be float32, float16 or sq8, got {self.storage!r}")
        check_range("embed_dedup.nlist", self.nlist, 1, 1 << 20)
        check_range("embed_dedup.nprobe", self.nprobe, 1, self.nlist if self.index == "ivf" else 1 << 20)
        check_range("embed_dedup.hnsw_m", self.hnsw_m, 2, 256)
        check_range("embed_dedup.ef_construction", self.ef_construction, 1)
        check_range("embed_dedup.ef_search", self.ef_search, 1)
        check_range("embed_dedup.train_rows", self.train_rows, self.nlist if self.index == "ivf" else 1)

    def factory(self) -> str:
        """The FAISS index-factory string of the configured index."""
        store = STORAGE[self.storage]
        if self.index == "flat":
            return store
        if self.index == "ivf":
            return f"IVF{self.nlist},{store}"
        return f"HNSW{self.hnsw_m}" + ("" if store == "Flat" else f",{store}")


class EmbedIndex:
    """A growing cosine index over L2-normalised float32 rows: `best(x)`, `add(x)`, `save`, `load`."""

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self.faiss = faiss_module()
        self.index = None  # built on the first `add` (E comes from the data)
        self.trained = False  # False: `index` is the exact float32 buffer awaiting train_rows rows

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    def _configured(self, dim: int):
        faiss = self.faiss
        index = faiss.index_factory(dim, self.config.factory(), faiss.METRIC_INNER_PRODUCT)
        if self.config.index == "ivf":
            faiss.extract_index_ivf(index).cp.spherical = True  # unit-norm centroids for cosine cells
        if self.config.index == "hnsw":
            index.hnsw.efConstruction = self.config.ef_construction
        return index

    def _set_search_params(self) -> None:
        if self.trained and self.config.index == "ivf":
            self.faiss.extract_index_ivf(self.index).nprobe = self.config.nprobe
        if self.trained and self.config.index == "hnsw":
            self.index.hnsw.efSearch = self.config.ef_search

    def best(self, x: np.ndarray) -> np.ndarray:
        """Best cosine [B] float32 of each row of x [B, E] against the index (-inf when none)."""
        if not self.ntotal:
            return np.full(len(x), -np.inf, np.float32)
        sims, ids = self.index.search(np.ascontiguousarray(x, np.float32), 1)  # [B, 1] each
        return np.where(ids[:, 0] >= 0, sims[:, 0], -np.inf).astype(np.float32)

    def add(self, x: np.ndarray) -> None:
        """Add rows x [B, E] float32 (in input order)."""
        if not len(x):
            return
        x = np.ascontiguousarray(x, np.float32)
        if self.index is None:
            target = self._configured(x.shape[1])
            self.trained = target.is_trained
            self.index = target if self.trained else self.faiss.IndexFlatIP(x.shape[1])
            self._set_search_params()
        if self.trained:
            self._add_trained(x)
            return
        self.index.add(x)
        if self.index.ntotal >= self.config.train_rows:
            self._train()

    def _add_trained(self, x: np.ndarray) -> None:
        if self.config.index == "hnsw":
            with one_thread(self.faiss):  # the graph depends on insertion order only
                self.index.add(x)
        else:
            self.index.add(x)

    def _train(self) -> None:
        buffer = self.index
        rows = self.faiss.rev_swig_ptr(buffer.get_xb(), buffer.ntotal * buffer.d)
        rows = np.array(rows, np.float32).reshape(buffer.ntotal, buffer.d)  # [N, E] a copy
        target = self._configured(buffer.d)
        with one_thread(self.faiss):  # seeded k-means: the same cells on any machine load
            target.train(rows[: self.config.train_rows])
        self.index, self.trained = target, True
        self._set_search_params()
        self._add_trained(rows)

    def save(self, folder: Path) -> None:
        if self.index is not None:
            self.faiss.write_index(self.index, str(folder / "index.faiss"))
            meta = {"factory": self.config.factory(), "trained": self.trained}
            (folder / "index.json").write_text(json.dumps(meta))

    def load(self, folder: Path) -> None:
        path = folder / "index.faiss"
        self.index, self.trained = None, False
        if path.is_file():
            self.index = self.faiss.read_index(str(path))
            self.trained = json.loads((folder / "index.json").read_text())["trained"]
            self._set_search_params()

    def nbytes(self, folder: Path) -> int:
        """Size of the saved index in bytes (what `save` writes into `folder`)."""
        self.save(folder)
        return (folder / "index.faiss").stat().st_size if self.index is not None else 0


def dedup_batch(index: EmbedIndex, x: np.ndarray, threshold: float) -> list[bool]:
    """Decide a batch x [B, E] (L2-normalised float32) in order: a row is kept unless its cosine
    with an indexed row or with a row kept earlier in the batch is >= threshold; kept rows are
    added to the index."""
    prior = index.best(x)  # [B]
    close = (x @ x.T) >= threshold  # [B, B] within the batch, exact
    keep = np.zeros(len(x), bool)
    for i in range(len(x)):
        keep[i] = prior[i] < threshold and not (close[i, :i] & keep[:i]).any()
    index.add(x[keep])
    return keep.tolist()
