"""The curate config: a TOML file with a ``[run]`` table and one ``[rules.NAME]`` table per rule.

Rules run in the order of the file (put cheap text rules first, then image rules, model scores,
dedup, balancing). Without a file, `DEFAULT_RULES` run: the rules that need no model or extra.
Unknown tables, rules or keys are refused with one line naming them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.curation.rules import build_config, check_range, make_config
from vlmkit.errors import ConfigError

DEFAULT_RULES = ("text_length", "text_repetition", "text_patterns", "image_decode", "image_size",
                 "aspect_ratio", "image_uniform", "exact_dedup")  # fmt: skip


@dataclass(kw_only=True, frozen=True)
class RunConfig:
    text_field: str = "suffix"  # the row's caption field (PaLI rows: "suffix")
    image_field: str = "image"  # manifest rows: the image path (or list of paths) field
    batch_size: int = 64  # rows scored together (model rules batch over these)
    checkpoint_rows: int = 2048  # save resume state after about this many input rows
    shard_size: int = 1000  # kept samples per output tar shard
    examples: int = 16  # example rows per rule in report.html
    thumb_size: int = 96

    def __post_init__(self) -> None:
        for name in ("batch_size", "checkpoint_rows", "shard_size", "thumb_size"):
            check_range(f"run.{name}", getattr(self, name), 1)
        check_range("run.examples", self.examples, 0)


@dataclass(kw_only=True, frozen=True)
class CurateConfig:
    run: RunConfig = field(default_factory=RunConfig)
    rules: tuple[tuple[str, object], ...] = ()  # (name, rule config) in run order

    def to_dict(self) -> dict:
        return {"run": dataclasses.asdict(self.run),
                "rules": [[name, dataclasses.asdict(cfg)] for name, cfg in self.rules]}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def parse_config(data: dict, only: str | None = None) -> CurateConfig:
    """A `CurateConfig` from the parsed TOML (``{"run": {...}, "rules": {name: {...}}}``);
    `only` keeps one rule (its table, or its defaults when the file does not list it)."""
    unknown = set(data) - {"run", "rules"}
    if unknown:
        raise ConfigError(f"unknown table [{sorted(unknown)[0]}] in the curate config; known: [run], [rules.NAME]")
    run = make_config(RunConfig, data.get("run", {}), "run")
    tables = data.get("rules", {name: {} for name in DEFAULT_RULES})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError("[rules] must hold one table per rule, e.g. [rules.text_length]")
    if only is not None:
        tables = {only: tables.get(only, {})}
    rules = tuple((name, build_config(name, table)) for name, table in tables.items())
    if not rules:
        raise ConfigError("the curate config lists no rules")
    return CurateConfig(run=run, rules=rules)


def load_config(path: str | Path | None, only: str | None = None) -> CurateConfig:
    """Read a curate TOML file (None: the default rules)."""
    if path is None:
        return parse_config({}, only)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"curate config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"curate config {path} is not valid TOML ({e})") from None
    return parse_config(data, only)
