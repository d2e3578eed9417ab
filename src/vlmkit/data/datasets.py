"""Readers for PaLI-style training data and a resumable, rank-aware shuffled stream.

- `JsonlDataset`: map-style; a manifest of rows ``{"image": path | [paths], "prefix", "suffix",
  ...}``. Bad rows are skipped, counted by reason in `.skipped`, and summarised in one warning.
- `TarShardDataset` (in `vlmkit.data.shards`, re-exported here with `is_shard_source` and
  `shard_texts`): iterable; webdataset-style tar shards, read as a stream.
- `ShuffledStream`: deterministic order for a seed, a disjoint per-rank split, epochs, and
  `state_dict()`/`load_state_dict()` that resume at the exact sample.
- `Augment` (in `vlmkit.data.augment`, re-exported here): photometric jitter only. Geometric augmentation would have to rewrite the targets:
  a horizontal flip swaps "left"/"right" answers, mirrors every loc box and mirrors rendered
  text, so OCR targets become wrong. Flip and crop are therefore left out on purpose; hue jitter
  is left out too, because it would turn a "red" object orange.

Samples are dicts: ``image`` (RGB PIL image, or a list of them), ``prefix``, ``suffix`` and
every other field of the row (e.g. ``task``, ``boxes``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from vlmkit.data.augment import Augment, augment_image
from vlmkit.data.image import load_image
from vlmkit.data.shards import (
    IMAGE_EXTS,
    SampleError,
    TarShardDataset,
    _decode_or_count,
    _summary,
    _warn_skipped,
    is_shard_source,
    shard_texts,
)
from vlmkit.errors import ConfigError, DataError, ImageError

__all__ = [
    "IMAGE_EXTS", "Augment", "JsonlDataset", "SampleError", "ShuffledStream", "TarShardDataset",
    "augment_image", "is_shard_source", "shard_texts",
]  # fmt: skip

log = logging.getLogger(__name__)


def measure_row(length_fn: Callable[[dict], int], row: dict) -> tuple[int, tuple[str, str] | None]:
    """(tokens of `row`, None), or (0, problem) when its images cannot be processed (a DataError of
    the processor, e.g. an image smaller than one patch): reported by line like any bad row."""
    try:
        return length_fn(row), None
    except DataError as e:
        return 0, ("unprocessable", f"cannot be processed: {e}")


class _LastRow:
    """`length_fn` remembering its last row (by identity; holding it keeps the identity unique):
    `_read` asks for a row's length for max_len and again for the budget, and a chat row's count
    processes the row, images included, so it is computed once."""

    def __init__(self, fn: Callable[[dict], int]):
        self.fn, self.row, self.n = fn, None, 0

    def __call__(self, row: dict) -> int:
        if row is not self.row:
            n = self.fn(row)  # stored only once it returned: an error is raised again next time
            self.row, self.n = row, n
        return self.n


def _row_problem(row: object, max_len: int | None, length_fn: Callable[[dict], int]) -> tuple[str, str] | None:
    """(skip reason, what is wrong) of a parsed row (before looking at images), or None."""
    if not isinstance(row, dict):
        return "bad_json", "is not valid JSON" if row is None else f"is not a JSON object (got {type(row).__name__})"
    if "videos" in row:  # a chat row's field: PaLI rows have no video input
        return "bad_video", 'has "videos", but {image, prefix, suffix} rows take images only'
    img = row.get("image")
    if not (isinstance(img, str) or (isinstance(img, list) and img and all(isinstance(p, str) for p in img))):
        return "missing_field", f'needs "image" as a path or a list of paths, got {json.dumps(img)[:40]}'
    for key in ("prefix", "suffix"):
        if not isinstance(row.get(key), str):
            return "missing_field", f'needs "{key}" as a string, got {json.dumps(row.get(key))[:40]}'
    if not row["suffix"].strip():
        return "empty_suffix", 'has an empty "suffix"'
    if max_len is None:
        return None
    n, problem = measure_row(length_fn, row)
    return problem or (("too_long", f"is longer than max_len={max_len}") if n > max_len else None)


def _char_length(row: dict) -> int:
    return len(row["prefix"]) + len(row["suffix"])


class JsonlDataset(torch.utils.data.Dataset):
    """Rows of a JSONL manifest; relative image paths resolve against `image_root` (default:
    the manifest's folder).

    With `validate`, every image is decoded once at construction (cached per path), so a bad
    file is found here instead of crashing a training step; without it only the JSON is
    checked and a bad image raises `ImageError` when its row is read. `max_len` drops rows whose
    `length_fn(row)` (default: characters of prefix + suffix; pass a token count to be exact)
    exceeds it. Other bad rows raise a `DataError` naming the file and line with
    ``bad_rows="error"``; with ``"skip"`` (the default) they are skipped and counted by reason in
    `.skipped` (bad_json, missing_field, empty_suffix, too_long, missing_image, unreadable_image,
    unprocessable, over_budget), `.first_bad` naming the first one. Raises `DataError` if the
    manifest is missing or no row is usable.

    `budget` (token-budget batching, `vlmkit.training.token_budget`): every row is measured with
    `length_fn` up front; the count is kept in `.lengths` (aligned with `.rows`) and handed out as
    the sample's ``num_tokens``, and a row longer than the budget is a bad row (over_budget): no
    batch could hold it.
    """

    def __init__(
        self, manifest: str | Path, image_root: str | Path | None = None, validate: bool = True,
        *, max_len: int | None = None, length_fn: Callable[[dict], int] | None = None, bad_rows: str = "skip",
        budget: int | None = None,
    ) -> None:  # fmt: skip
        self.manifest = Path(manifest)
        if not self.manifest.is_file() and not self._many_files:
            raise DataError(f"manifest {self.manifest} does not exist")
        if bad_rows not in ("skip", "error"):
            raise ConfigError(f"bad_rows must be 'skip' or 'error', got {bad_rows!r}")
        self.image_root = Path(image_root) if image_root is not None else self.manifest.parent
        self.length_fn = _LastRow(length_fn or _char_length)
        self.rows: list[dict] = []
        self.budget = budget
        self.lengths: list[int] | None = [] if budget is not None else None  # tokens per row (with a budget)
        self.skipped: Counter = Counter()
        self.first_bad: str | None = None  # "manifest:line what is wrong" of the first skipped row
        self._read(validate, max_len, strict=bad_rows == "error")

    _many_files = False  # a reader of several files (tar shards) checks its source itself

    def _entries(self) -> Iterator[tuple[str, object]]:
        """("file:line", parsed row or None) of every non-blank line; a reader of another
        container (tar shards: "shard:key") overrides it."""
        try:
            f = open(self.manifest, "rb")  # bytes: a line of bad UTF-8 is one bad row
        except OSError as e:
            raise DataError(f"cannot read manifest {self.manifest} ({e.strerror})") from None
        with f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are not rows
                try:
                    yield f"{self.manifest}:{n}", json.loads(line)
                except ValueError:  # JSONDecodeError and UnicodeDecodeError
                    yield f"{self.manifest}:{n}", None

    def _read(self, validate: bool, max_len: int | None, strict: bool) -> None:
        image_ok: dict[Path, tuple[str, str] | None] = {}  # path -> problem (None = fine), decoded once
        total = 0
        for place, row in self._entries():
            total += 1
            problem = self._row_problem(row, max_len)
            if problem is None and validate:
                for p in self._paths(row):
                    if p not in image_ok:
                        image_ok[p] = self._check_image(p)
                    problem = problem or image_ok[p]
            problem = problem or self._budget_problem(row)
            if problem is None:
                self.rows.append(row)
                continue
            where = f"{place} {problem[1]}"
            if strict and problem[0] != "too_long":  # too_long is the max_len filter, not an error
                raise DataError(f"{where} (pass --data.bad_rows skip to skip bad rows)")
            self.skipped[problem[0]] += 1
            self.first_bad = self.first_bad or where
        if self.skipped:
            n = sum(self.skipped.values())
            log.warning("%s: skipped %d of %d rows (%s; first: %s)", self.manifest, n, total,
                        _summary(self.skipped), self.first_bad)  # fmt: skip
        if not self.rows:
            why = f"{_summary(self.skipped)}; first: {self.first_bad}" if self.skipped else "it is empty"
            raise DataError(f"manifest {self.manifest} has no usable rows ({why})")

    def _row_problem(self, row: object, max_len: int | None) -> tuple[str, str] | None:
        """(skip reason, what is wrong) of a parsed row, or None; a reader of other rows overrides it."""
        return _row_problem(row, max_len, self.length_fn)

    def _budget_problem(self, row: dict) -> tuple[str, str] | None:
        """Measure a good row against `budget` (recording its length), or None without a budget."""
        if self.budget is None:
            return None
        n, problem = measure_row(self.length_fn, row)
        if problem:
            return problem
        if n > self.budget:
            return "over_budget", f"has {n} tokens, more than data.max_tokens_per_batch={self.budget}"
        self.lengths.append(n)
        return None

    def _with_length(self, index: int, sample: dict) -> dict:
        """`sample` with its measured ``num_tokens`` when the rows were measured (a budget)."""
        return sample if self.lengths is None else {**sample, "num_tokens": self.lengths[index]}

    def _paths(self, row: dict) -> list[Path]:
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        return [self.image_root / p for p in images]  # absolute p stays absolute under `/`

    @staticmethod
    def _check_image(path: Path) -> tuple[str, str] | None:
        if not path.is_file():
            return "missing_image", f"names image {path}, which does not exist"
        try:
            load_image(path)
        except ImageError as e:
            return "unreadable_image", f"names image {path}, which cannot be read ({e})"
        return None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        """Row `index` with ``image`` decoded to RGB PIL (a list if the row lists several)."""
        row = dict(self.rows[index])
        images = [load_image(p) for p in self._paths(row)]
        row["image"] = images if isinstance(row["image"], list) else images[0]
        return self._with_length(index, row)


def _buffer_shuffle(source: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Classic shuffle buffer: emit a random slot once `size` items are held, then drain."""
    buf: list = []
    for item in source:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], item
        yield out
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class ShuffledStream(torch.utils.data.IterableDataset):
    """Deterministic, rank-split, resumable iteration over a dataset; one `iter` = one epoch.

    Map-style datasets (`JsonlDataset`) get a full permutation per epoch (`buffer_size` unused)
    and rank r takes every world_size-th index of it (`equal_split` drops the remainder so all
    ranks see the same count). Iterable datasets go through a shuffle buffer of `buffer_size`;
    with ``split="sample"`` every rank reads the same stream and keeps items i % world_size ==
    rank (disjoint, covering, counts differ by at most 1); ``split="shard"`` (tar shards only)
    gives each rank its own shards, which reads less but balances only as well as the shards.
    Tar shards are also re-ordered per epoch, and buffered undecoded, so a resume skips
    cheaply.

    `state_dict()` records (epoch, position) where position counts samples this rank has
    handed out (including skipped undecodable ones); after `load_state_dict` the next `iter`
    yields exactly the rest of the interrupted epoch, then the stream moves to the next epoch.
    Augmentation is seeded by (seed, epoch, slot) for map-style datasets, slot being the item's
    place in the epoch's permutation, and by (seed, epoch, rank, position) for streamed ones, so
    it resumes exactly too. State lives in this object: use it with `DataLoader(num_workers=0)`.

    Another number of ranks (`load_resplit_state`, map-style only): W ranks that each handed out
    p items have consumed exactly the first W * p items of the epoch's permutation (rank r holds
    items r, r + W, ...), whatever W is; so W' ranks resume by splitting the rest of the
    permutation from offset W * p (`start`) among themselves. Every later global batch holds the
    same items as the uninterrupted run's. Streamed datasets shuffle per rank: no such invariant.
    """

    def __init__(
        self, dataset, buffer_size: int = 1000, seed: int = 0, rank: int = 0, world_size: int = 1,
        *, split: str = "sample", equal_split: bool = False, augment: Augment | None = None,
    ) -> None:  # fmt: skip
        if world_size < 1 or not 0 <= rank < world_size or buffer_size < 1 or seed < 0:
            raise ConfigError(f"bad stream settings rank={rank} world_size={world_size} "
                              f"buffer_size={buffer_size} seed={seed}")  # fmt: skip
        self.map_style = not isinstance(dataset, torch.utils.data.IterableDataset) and hasattr(
            dataset, "__len__"
        )
        sharded = hasattr(dataset, "iter_raw")
        if split not in ("sample", "shard") or (split == "shard" and not sharded):
            raise ConfigError(f"split must be 'sample', or 'shard' for tar shards; got {split!r}")
        if split == "shard" and len(dataset.shards) < world_size:
            raise ConfigError(f"{len(dataset.shards)} shards cannot feed {world_size} ranks")
        self.dataset, self.buffer_size, self.seed = dataset, buffer_size, seed
        self.rank, self.world_size, self.split = rank, world_size, split
        self.equal_split, self.augment = equal_split, augment
        self.epoch, self.position = 0, 0
        self.start = 0  # where this split of the current epoch begins (> 0 after a resplit)
        self.skipped: Counter = Counter()

    def _settings(self) -> dict:
        keys = ("seed", "rank", "world_size", "buffer_size", "split", "equal_split")
        return {k: getattr(self, k) for k in keys}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "start": self.start, **self._settings()}

    def load_state_dict(self, state: dict) -> None:
        """Resume; refuses a state saved with other settings (the order would differ)."""
        diff = {k: v for k, v in self._settings().items() if state.get(k) != v}
        if diff:
            raise ConfigError(f"stream state was saved with other settings: {sorted(diff)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.start = int(state.get("start", 0))

    def load_resplit_state(self, states: list[dict]) -> None:
        """Resume from the states of every rank of a run with another number of ranks: continue
        at the same global place of the same epoch (see the class docstring)."""
        if not self.map_style:
            raise ConfigError("resuming on another number of ranks needs a map-style dataset (a JSONL "
                              "manifest): a streamed dataset is shuffled per rank")  # fmt: skip
        keys = ("seed", "buffer_size", "split", "equal_split")
        diff = sorted(k for k in keys if any(s.get(k) != getattr(self, k) for s in states))
        if diff:
            raise ConfigError(f"stream state was saved with other settings: {diff}")
        places = {(int(s["epoch"]), int(s["position"]), int(s.get("start", 0))) for s in states}
        if len(places) != 1:
            raise ConfigError("the saved ranks stopped at different data positions (some skipped bad "
                              "samples), so no global position exists; resume on the same number of ranks")
        epoch, position, start = places.pop()
        self.epoch, self.position, self.start = epoch, 0, start + len(states) * position

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position, self.start = epoch, 0, 0

    def __len__(self) -> int:
        if not self.map_style:
            raise TypeError("a streamed dataset has no length")
        n = len(self.dataset) - (len(self.dataset) % self.world_size if self.equal_split else 0)
        return len(range(self.rank, n, self.world_size))

    def _plan(self, epoch: int) -> tuple[Iterator, Callable]:
        """This rank's items for `epoch`, in order, and the function making a sample of one."""
        ds = self.dataset
        if self.map_style:
            n = len(ds)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)  # same on all ranks
            perm = perm[self.start :]  # the rest of the epoch after a resplit (else start = 0)
            if self.equal_split:
                perm = perm[: len(perm) - len(perm) % self.world_size]
            return iter(perm[self.rank :: self.world_size].tolist()), ds.__getitem__
        if hasattr(ds, "iter_raw"):
            order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(ds.shards))
            shards = [ds.shards[i] for i in order]
            if self.split == "shard":
                shards = shards[self.rank :: self.world_size]
            source = ds.iter_raw(shards)
            fetch = lambda raw: _decode_or_count(ds.decode, raw, self.skipped)  # noqa: E731
        else:
            source, fetch = iter(ds), (lambda sample: sample)
        if self.split == "sample":
            source = islice(source, self.rank, None, self.world_size)
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank])
        return _buffer_shuffle(source, self.buffer_size, rng), fetch

    def __iter__(self) -> Iterator[dict]:
        if torch.utils.data.get_worker_info() is not None:
            raise ConfigError("ShuffledStream keeps its resume state in-process: use num_workers=0")
        epoch, first = self.epoch, self.position
        items, fetch = self._plan(epoch)
        before = sum(self.skipped.values())
        for k, item in enumerate(islice(items, first, None), start=first):
            sample = fetch(item)
            self.position = k + 1  # counted before yielding: state_dict() now excludes it
            if sample is None:
                continue
            if self.augment is not None:
                sample = self._augmented(sample, np.random.default_rng(self._augment_seed(epoch, k)))
            yield sample
        _warn_skipped(self.skipped, before, "stream")
        self.epoch, self.position, self.start = epoch + 1, 0, 0

    def _augment_seed(self, epoch: int, k: int) -> list[int]:
        """Map-style: the item's slot in the epoch's permutation (the same for any rank split)."""
        if self.map_style:
            return [self.seed, epoch, 2, self.start + self.rank + k * self.world_size]
        return [self.seed, epoch, 2, self.rank, k]

    def _augmented(self, sample: dict, rng: np.random.Generator) -> dict:
        sample = dict(sample)
        img = sample["image"]
        if isinstance(img, list):
            sample["image"] = [augment_image(i, self.augment, rng) for i in img]
        else:
            sample["image"] = augment_image(img, self.augment, rng)
        return sample
