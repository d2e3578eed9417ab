"""Strict, table-driven conversion between our parameter names and a checkpoint's.

The tables and `rename` live beside the models (`vlmkit.models.common.mapping`, re-exported
here); this module is the driver that reads tensors and checks them. Conversion is strict:
every source key must be consumed or explicitly dropped, every target key filled, and every
shape must match; otherwise one `CheckpointError` lists the offending keys.
"""

import re
from collections.abc import Callable, Iterable, Mapping

import torch

from vlmkit.errors import CheckpointError
from vlmkit.models.common.mapping import Table, rename

__all__ = ["Table", "convert_strict", "rename"]

_MAX_LISTED = 8


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def convert_strict(
    source_keys: Iterable[str],
    get: Callable[[str], torch.Tensor],
    target_shapes: Mapping[str, tuple[int, ...]],
    table: Table,
    reverse: bool,
    drop: Iterable[str] = (),
    what: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Map every source tensor to a target name, checking the result against `target_shapes`.

    Args:
        source_keys: names in the source naming.
        get: loads one source tensor by name (lazily, so a large checkpoint streams), or returns
            anything with its `.shape` (`vlmkit.weights.hf.plan_state`: a tensor not read yet).
        target_shapes: every target name and its expected shape.
        table: the family's (ours, theirs) table; `reverse=True` maps theirs -> ours.
        drop: regexes of source keys that are known and deliberately not used (e.g. a tied
            `lm_head.weight`).
        what: how to name the source in errors.

    Returns:
        {target name: tensor}. Raises CheckpointError naming missing, unexpected and mis-shaped keys.
    """
    drops = [re.compile(d) for d in drop]
    out, unexpected, bad_shape, bad_targets = {}, [], [], set()
    for key in source_keys:
        if any(d.search(key) for d in drops):
            continue
        name = rename(key, table, reverse)
        if name is None or name not in target_shapes:
            unexpected.append(key)
            continue
        tensor = get(key)
        if tuple(tensor.shape) != tuple(target_shapes[name]):
            bad_shape.append(f"{key} {tuple(tensor.shape)} != expected {tuple(target_shapes[name])}")
            bad_targets.add(name)
            continue
        out[name] = tensor
    missing = [k for k in target_shapes if k not in out and k not in bad_targets]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if bad_shape:
        problems.append(f"mis-shaped: {_listed(bad_shape)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(problems))
    return out
