"""The rule API of `vlmkit data curate`: rows, the `Rule` protocol, the registry of rules.

A row is a plain dict, the same for every input format and engine (so a Ray Data `map_batches`
can call the same functions): ``__index__`` (place in the input), ``__key__`` (manifest:line or
shard sample key), ``text`` (the caption), ``meta`` (the JSON row), and either ``image_path`` (a
manifest's image file) or ``image_bytes`` (a shard's image member). `image_bytes_of` and
`image_of` read and decode the image once per row and cache it in the row (``_bytes``, ``_image``;
EXIF orientation applied by `vlmkit.data.image.load_image`), raising `RowError` with a reason
(missing_image, undecodable_image) that the engine counts as an unreadable row.

A rule has a `name`, a `config` dataclass, `score(row) -> value` and `keep(value) -> bool`. Rules
score and decide in batches (`score_batch`, `decide_batch`; `RuleBase` maps the single-row
methods): scoring is pure (a function of the row and of what the rule was fitted on), deciding
may update state (dedup indexes, per-cluster counts), always in input order, so a run is
deterministic. Stateful rules save and load that state (`save` / `load`, into a folder given by
the engine); rules that need a first look at the data (k-means centroids, a top-fraction
threshold, concept frequencies) have `fit_rows` > 0 (-1: every row) and a `fit(rows)` method.
`summary(value)` is what the report shows: a float (histogram), a string (counts) or None.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from vlmkit.data.image import load_image
from vlmkit.errors import ConfigError, ImageError


class RowError(Exception):
    """A row cannot be scored (its image is missing or undecodable); `reason` is counted."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class Rule(Protocol):
    name: str
    config: Any

    def score(self, row: dict) -> Any: ...

    def keep(self, value: Any) -> bool: ...


class RuleBase:
    """Defaults for a rule: batch methods from the single-row ones, no state, no fitting."""

    name: str = ""
    fit_rows: int = 0  # rows `fit` needs before the run (0: none, -1: every row)
    needs_image: bool = False
    measures: str = "score"  # what `summary` is, for the report's histogram

    def __init__(self, config, resources: "Resources") -> None:
        self.config = config
        self.resources = resources

    def score(self, row: dict) -> Any:
        return self.score_batch([row])[0]

    def keep(self, value: Any) -> bool:
        return self.decide_batch([value])[0]

    def score_batch(self, rows: list[dict]) -> list[Any]:
        return [self.score(r) for r in rows]

    def decide_batch(self, values: list[Any]) -> list[bool]:
        return [self.keep(v) for v in values]

    def summary(self, value: Any) -> float | str | None:
        return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None

    def fit(self, rows: Iterable[dict]) -> None:
        pass

    def fitted_state(self) -> dict:
        """JSON-able result of `fit` (saved once, before the run starts)."""
        return {}

    def load_fitted(self, state: dict) -> None:
        pass

    def save(self, folder: Path) -> None:
        """Write the decision state (dedup index, counts) into `folder` (a fresh folder)."""

    def load(self, folder: Path) -> None:
        pass


class Bounded(RuleBase):
    """A rule keeping a row when its number is at least (`at_least`) or at most one config field."""

    bound: str = ""  # the config field holding the limit
    at_least: bool = True

    def keep(self, value: float) -> bool:
        limit = getattr(self.config, self.bound)
        return value >= limit if self.at_least else value <= limit


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule: its config dataclass and the class built from it; `doc` is one line."""

    name: str
    config: type
    build: Callable[..., RuleBase]
    doc: str
    extra: str | None = None  # pip package the rule imports ("rapidocr-onnxruntime"), if optional


RULES: dict[str, RuleSpec] = {}


def register(name: str, config: type, doc: str, extra: str | None = None):
    """Class decorator: add a rule class to `RULES` under `name`."""

    def wrap(cls):
        cls.name = name
        RULES[name] = RuleSpec(name, config, cls, doc, extra)
        return cls

    return wrap


def build_config(name: str, table: dict):
    """The rule's config dataclass from its TOML table; unknown rule / key: one line naming it."""
    from vlmkit.curation import rule_modules  # noqa: F401  (registers every rule)

    if name not in RULES:
        raise ConfigError(f"unknown curation rule [rules.{name}]; known: {', '.join(sorted(RULES))}")
    return make_config(RULES[name].config, table, f"rules.{name}")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a config field's annotation (int, float, str, bool, X | None,
    list[X], dict[str, X])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _type_ok(v, args[1]) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def make_config(cls: type, table: dict, where: str):
    """`cls(**table)` for a TOML table; an unknown key or a value of the wrong type: one line."""
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"unknown key {key!r} in [{where}]; known: {', '.join(sorted(hints))}")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"[{where}] {key} = {value!r} is not of type {getattr(hints[key], '__name__', hints[key])}")
    return cls(**table)


class Resources:
    """What rules share within a run: loaded scoring models, by folder (loaded once)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._encoders: dict[str, Any] = {}

    def encoder(self, folder: str):
        from vlmkit.curation.encoder import TwoTowerEncoder

        if folder not in self._encoders:
            self._encoders[folder] = TwoTowerEncoder(folder, self.batch_size)
        return self._encoders[folder]


def image_bytes_of(row: dict) -> bytes:
    """The encoded image of a row (a shard member, or the manifest's file read once)."""
    if "_bytes" not in row:
        data = row.get("image_bytes")
        if data is None:
            path = row.get("image_path")
            if path is None:
                raise RowError("missing_image", f"{row['__key__']} names no image")
            try:
                data = Path(path).read_bytes()
            except OSError:
                raise RowError("missing_image", f"{row['__key__']}: cannot read {path}") from None
        row["_bytes"] = data
    return row["_bytes"]


def image_of(row: dict) -> Image.Image:
    """The row's image as RGB PIL, EXIF orientation applied, decoded once."""
    if "_image" not in row:
        try:
            row["_image"] = load_image(image_bytes_of(row))
        except ImageError as e:
            row["_image"] = RowError("undecodable_image", f"{row['__key__']}: {e}")
    if isinstance(row["_image"], RowError):
        raise row["_image"]
    return row["_image"]


def chunks(rows: Iterable[dict], n: int) -> Iterator[list[dict]]:
    """Consecutive lists of `n` rows (the last may be shorter) from a stream."""
    it = iter(rows)
    while chunk := list(islice(it, n)):
        yield chunk


def check_range(name: str, value: float, low: float, high: float = float("inf")) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
