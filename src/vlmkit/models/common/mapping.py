"""Declarative key-mapping tables between our parameter names and a checkpoint's.

A family's mapping is a list of `(ours, theirs)` name patterns where `{}` stands for a layer
index; a pattern names a module (its parameters keep their suffix) or a single tensor. The same
table converts in both directions (`rename(..., reverse=True)`). This is the pure naming half;
the strict, shape-checked conversion driver that reads tensors is `vlmkit.weights.convert`.
"""

import re

Table = list[tuple[str, str]]


def _compile(pattern: str) -> re.Pattern:
    body = re.escape(pattern).replace(r"\{\}", r"(\d+)")
    return re.compile(rf"^{body}(\..+)?$")


def _fill(pattern: str, indices: tuple[str, ...]) -> str:
    for idx in indices:
        pattern = pattern.replace("{}", idx, 1)
    return pattern


def rename(key: str, table: Table, reverse: bool = False) -> str | None:
    """Translate one key through the table (ours -> theirs, or theirs -> ours); None if no rule."""
    for ours, theirs in table:
        src, dst = (theirs, ours) if reverse else (ours, theirs)
        m = _compile(src).match(key)
        if m:
            *indices, suffix = m.groups()
            return _fill(dst, tuple(indices)) + (suffix or "")
    return None


def identity_table(names: list[str]) -> Table:
    """A table for checkpoints already in our naming: each top-level name maps to itself."""
    return [(n, n) for n in names]


def prefixed(prefix: str, table: Table) -> Table:
    """`table` with `prefix` on both sides: a part's own table inside a composed model."""
    return [(prefix + ours, prefix + theirs) for ours, theirs in table]
