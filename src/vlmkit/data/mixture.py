"""Weighted data mixtures: the source list of `data.mixture`, and a resumable batch sampler over sources.

A mixture is a list of sources, each a JSONL manifest or tar shards (text-only and interleaved
ones: `vlmkit.training.mixture_shards`) with a weight and a kind:

    image-text   PaLI rows {image, prefix, suffix} or chat rows {images, videos, messages}
    text         rows without images: {text}, {prefix, suffix} or chat rows {messages}
    interleaved  documents with several images placed in the text: OBELICS-style
                 {"texts": [str | null, ...], "images": [null | path, ...]}, or chat rows whose
                 messages hold image (or video) items between text items

given as JSON on the command line (``--data.mixture '[{"source": "a.jsonl", "weight": 0.7}, ...]'``)
or as the path of a .json / .toml file (relative sources resolve against the file's folder).

Sampling. Each *micro-batch* comes from one source (`MixtureStream`): a text-only batch then runs
the decoder alone (no vision forward, no gradient into the vision tower or projector), every
batch pads to rows of one kind, and all ranks take the same source for the same micro-batch (the
choice depends on the seed and the micro-batch's index only), so FSDP's collectives and DDP's
gradient buckets stay in step. Several micro-batches of one optimizer step (grad_accum, ranks
share one) still mix sources. This is the granularity DeepSeek-VL's mixture amounts to.

Micro-batch k takes the source whose slice of [0, 1) (widths = normalised weights) holds
u_k = frac(u_0 + k * (sqrt(5) - 1) / 2), u_0 drawn from the seed: a golden-ratio (Weyl) sequence.
It is deterministic, its state is the draw count alone, and unlike independent draws its
proportions hold at every prefix, not only on average: after n batches each source has had
n * w ± O(log n) of them (independent draws drift by ~sqrt(n * w)), so a short run or an ablation
gets the mixture it asked for.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.data.shards import is_shard_source
from vlmkit.errors import ConfigError, DataError

KINDS = ("image-text", "text", "interleaved")
KIND_ALIASES = {"text-only": "text"}
SOURCE_KEYS = ("source", "weight", "kind", "name")
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # its continued fraction [0; 1, 1, ...] spreads k * GOLDEN most evenly


@dataclass(kw_only=True, frozen=True)
class MixtureSource:
    source: str  # a JSONL manifest, or tar shards (image-text ones on PaliGemma only)
    weight: float  # > 0; weights are normalised over the mixture
    kind: str = "image-text"  # one of KINDS
    name: str = ""  # shown in logs and errors; default: the file's stem


def _load_entries(value: str, flag: str) -> tuple[object, Path]:
    """(parsed entries, folder relative sources resolve against) of a JSON string or a file path."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value), Path.cwd()
        except ValueError as e:
            raise ConfigError(f"--{flag}: {value[:60]!r} is not valid JSON ({e.msg} at character {e.pos})") from None
    path = Path(value)
    if path.suffix not in (".json", ".toml") or not path.is_file():
        raise ConfigError(f"--{flag}: {value!r} is neither a JSON list of sources nor an existing .json / .toml file")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--{flag}: cannot read {path} ({' '.join(str(e).split())})") from None
    return data, path.parent


def _source(entry: object, i: int, base: Path, flag: str) -> MixtureSource:
    """One checked source of the list (ConfigError / DataError naming it)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"--{flag}: source {i} must be an object with {', '.join(SOURCE_KEYS)}")
    where = f"--{flag}: source {i} ({entry.get('name') or entry.get('source')!s})"
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(SOURCE_KEYS)})")
    if not isinstance(entry.get("source"), str) or not entry["source"]:
        raise ConfigError(f"{where}: needs \"source\": the path of a manifest")
    weight = entry.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ConfigError(f"{where}: weight must be a number > 0, got {json.dumps(weight)}")
    kind = KIND_ALIASES.get(entry.get("kind", "image-text"), entry.get("kind", "image-text"))
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {entry.get('kind')!r} (one of {', '.join(KINDS)})")
    path = Path(entry["source"]) if Path(entry["source"]).is_absolute() else base / entry["source"]
    shards = is_shard_source(path)  # a .tar, a glob or a folder of .tar files
    if not (path.is_file() or (shards and (path.exists() or "*" in str(path)))):
        raise DataError(f"{where}: {path} does not exist")
    return MixtureSource(source=str(path), weight=float(weight), kind=kind, name=str(entry.get("name") or path.stem))


def parse_mixture(value: str, flag: str = "data.mixture") -> list[MixtureSource]:
    """The sources of `value` (a JSON list, or a .json / .toml file holding one; a file may also
    hold {"sources": [...]}, TOML as [[sources]] tables).

    Raises:
        ConfigError: malformed JSON / TOML, an unknown key or kind, a weight that is not > 0,
            no sources; the message names the flag (and the source).
        DataError: a source's file does not exist.
    """
    data, base = _load_entries(value, flag)
    entries = data.get("sources") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--{flag}: expected a non-empty list of sources, got {type(entries).__name__}")
    return [_source(e, i, base, flag) for i, e in enumerate(entries)]


class MixtureSampler:
    """Source index of each draw: golden-ratio sequence over the weights' slices (module doc)."""

    def __init__(self, weights: list[float], seed: int = 0):
        if not weights or any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise ConfigError(f"mixture weights must be numbers > 0, got {weights}")
        w = np.asarray(weights, dtype=np.float64)
        self.edges = np.cumsum(w / w.sum())[:-1]  # upper edges of all slices but the last
        self.offset = float(np.random.default_rng([seed, 0x6D6978]).random())

    def choose(self, k: int) -> int:
        """Source of draw k (k >= 0)."""
        u = (self.offset + k * GOLDEN) % 1.0
        return int(np.searchsorted(self.edges, u, side="right"))

    def counts(self, n: int, start: int = 0) -> np.ndarray:
        """int64 [S]: how many of draws start .. start + n - 1 go to each source."""
        u = (self.offset + np.arange(start, start + n, dtype=np.float64) * GOLDEN) % 1.0
        return np.bincount(np.searchsorted(self.edges, u, side="right"), minlength=len(self.edges) + 1)


class MixtureStream:
    """Micro-batches from several per-source batch streams, each batch's source drawn by weight.

    `streams` are resumable batch streams (`vlmkit.training.collate.BatchStream`: next_batch,
    state_dict, load_state_dict, load_resplit_state), one per source and each split over ranks
    the same way; a source that runs out starts its next epoch (its own shuffle) and the others
    go on. `state_dict` holds the draw count and every source's stream state, so a resumed run
    draws the same sources and samples. `collate` (samples -> batch, for eval batches) defaults
    to the first stream's.
    """

    def __init__(self, streams: list, weights: list[float], seed: int = 0, names: list[str] | None = None,
                 collate: Callable[[list[dict]], dict] | None = None):
        if len(streams) != len(weights):
            raise ConfigError(f"{len(streams)} streams for {len(weights)} mixture weights")
        self.streams, self.weights = list(streams), [float(w) for w in weights]
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(streams))]
        self.sampler = MixtureSampler(self.weights, seed)
        self.seed, self.draws = seed, 0
        self.collate = collate if collate is not None else self.streams[0].collate

    @property
    def micro_batch_size(self) -> int:
        return self.streams[0].micro_batch_size

    def next_source(self) -> int:
        """Source of the next micro-batch (without drawing it)."""
        return self.sampler.choose(self.draws)

    def next_batch(self) -> dict:
        source = self.next_source()
        batch = self.streams[source].next_batch()
        self.draws += 1  # after the batch: a failed read leaves the state where it was
        return batch

    def state_dict(self) -> dict:
        return {"draws": self.draws, "seed": self.seed, "weights": self.weights, "names": self.names,
                "sources": [s.state_dict() for s in self.streams]}

    def _check(self, state: dict) -> None:
        saved = (state.get("seed"), list(state.get("weights", [])), len(state.get("sources", [])))
        if saved != (self.seed, self.weights, len(self.streams)):
            raise ConfigError(f"the checkpoint's data mixture (seed, weights, sources) = {saved} differs from this "
                              f"run's {(self.seed, self.weights, len(self.streams))}; resume with the same mixture")

    def load_state_dict(self, state: dict) -> None:
        self._check(state)
        for stream, s in zip(self.streams, state["sources"]):
            stream.load_state_dict(s)
        self.draws = int(state["draws"])

    def load_resplit_state(self, states: list[dict]) -> None:
        """Resume from every rank's state of a run with another number of ranks: all ranks drew
        in step, so they share one draw count; each source re-splits its own permutation."""
        for state in states:
            self._check(state)
        draws = {int(s["draws"]) for s in states}
        if len(draws) != 1:
            raise DataError(f"the saved ranks drew different numbers of mixture batches ({sorted(draws)})")
        for i, stream in enumerate(self.streams):
            stream.load_resplit_state([s["sources"][i] for s in states])
        self.draws = draws.pop()
