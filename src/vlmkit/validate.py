"""Checks on the files vlmkit reads: JSON shape and types, one line naming the file and field.

* `read_json_object`: a file that must hold one JSON object (config.json, preprocessor_config.json,
  tokenizer_config.json, the shard index).
* `build_config`: a family's `config_from_hf` run on such a dict, then every field of the resulting
  config dataclass checked against its type annotation (int, float, bool, str, Literal, tuple,
  Optional, nested dataclasses), so "16" where an int belongs names `file: vision.hidden_size`.
* `shard_index`: the weight map of `model.safetensors.index.json`, every shard inside the folder.
* `image_stats`: image_mean / image_std as transformers accepts them (one number, or one per channel),
  finite, std > 0.
* `check_cast` / `cast_checked`: a checkpoint tensor cast to the model dtype only within its kind (float to float).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path

import torch

from vlmkit.errors import CheckpointError, VlmkitError


def read_json_object(path: str | Path, error: type[VlmkitError] = CheckpointError) -> dict:
    """The JSON object in `path`; `error` naming the file (and line) if unreadable or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {_kind(data)}")
    return data


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


# --- config dataclasses ----------------------------------------------------------------------------


def _type_problem(value, tp, signed: bool = False) -> str | None:
    """Why `value` does not fit annotation `tp` (None if it does). Ints fit floats (JSON has one
    number type); bools fit neither ints nor floats; numbers must be finite, ints non-negative
    unless the field is `signed` (dataclass field metadata, e.g. a negative layer index)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a, signed) for a in args]
        return None if None in problems else next(p for p in problems if p)
    if tp is type(None):
        return None if value is None else f"expected null, got {_kind(value)}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {', '.join(map(repr, args))}, got {value!r}"
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return f"expected a list, got {_kind(value)}"
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        for i, item in enumerate(value):
            problem = _type_problem(item, inner if inner is not None else args[i] if i < len(args) else object, signed)
            if problem:
                return f"item {i}: {problem}"
        return None
    if tp is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {_kind(value)}"
    if tp in (int, float):
        ok = isinstance(value, int) or (tp is float and isinstance(value, float))
        if not ok or isinstance(value, bool):
            return f"expected {'an integer' if tp is int else 'a number'}, got {_kind(value)} {value!r}"
        if not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        return f"must be >= 0, got {value}" if tp is int and value < 0 and not signed else None
    if tp is str:
        return None if isinstance(value, str) else f"expected a string, got {_kind(value)}"
    return None  # objects, callables, ...: not from JSON, nothing to check


def check_types(cfg, where: str, prefix: str = "") -> None:
    """Check every field of dataclass `cfg` (recursively) against its annotation; CheckpointError
    `where: field.path: problem` on the first mismatch."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_types(value, where, f"{name}.")
            continue
        problem = _type_problem(value, hints.get(f.name, object), f.metadata.get("signed", False))
        if problem:
            raise CheckpointError(f"{where}: {name}: {problem}")


def _dataclasses_in(tp) -> set[type]:
    """The dataclass types reachable from annotation `tp` (through fields, unions, tuples)."""
    found: set[type] = set()
    todo = [tp]
    while todo:
        t = todo.pop()
        todo.extend(typing.get_args(t))
        if isinstance(t, type) and dataclasses.is_dataclass(t) and t not in found:
            found.add(t)
            todo.extend(typing.get_type_hints(t).values())
    return found


def _typed_retry(build: Callable[[dict], object], d: dict, where: str) -> None:
    """After `build` failed: build again with the dataclasses' __post_init__ checks switched off, so a
    wrong type (which broke arithmetic in a check) is reported by field name. Returns if types are fine."""
    try:
        classes = _dataclasses_in(typing.get_type_hints(build).get("return"))
    except (NameError, TypeError):  # an unannotated builder: nothing to retry with
        return
    saved = {c: c.__dict__.get("__post_init__") for c in classes}
    try:
        for c in classes:
            if saved[c] is not None:
                c.__post_init__ = lambda self: None
        cfg = build(d)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        return
    finally:
        for c, fn in saved.items():
            if fn is not None:
                c.__post_init__ = fn
    check_types(cfg, where)


def build_config(build: Callable[[dict], object], d: dict, where: str | Path):
    """`build(d)` (a family's `config_from_hf`), type-checked; CheckpointError naming `where` and the
    field instead of a TypeError / KeyError from deep inside."""
    where = str(where)
    for key, value in d.items():  # HF nests sub-configs as `<name>_config` objects
        if key.endswith("_config") and not isinstance(value, (dict, type(None))):
            raise CheckpointError(f"{where}: {key}: expected an object, got {_kind(value)}")
    try:
        cfg = build(d)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        _typed_retry(build, d, where)
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, KeyError):
            cause = f"missing key {e}"
        elif isinstance(e, (TypeError, AttributeError)):
            cause = f"a value has the wrong type ({cause})"
        raise CheckpointError(f"{where}: {cause}") from None
    check_types(cfg, where)
    return cfg


# --- weights -------------------------------------------------------------------------------------------


def shard_index(path: Path, folder: Path) -> dict[str, Path]:
    """{tensor name: shard file} of a safetensors index, every shard a plain name inside `folder`."""
    index = read_json_object(path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path}: weight_map: expected an object, got {_kind(weight_map)}")
    out = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{path}: weight_map.{key}: expected a file name, got {_kind(shard)}")
        # Checked on the name, not the resolved path: the Hugging Face cache links each shard to a
        # blob outside the snapshot folder, which is fine; a name that climbs out is not.
        norm = os.path.normpath(shard)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise CheckpointError(f"{path}: weight_map.{key}: shard {shard!r} is outside the model folder")
        out[key] = folder / norm
    return out


def check_cast(source: torch.dtype, dtype: torch.dtype, key: str, what: str) -> None:
    """CheckpointError if casting a `source` tensor to `dtype` would change its kind (int into float...)."""
    def kind(dt: torch.dtype) -> str:
        return "bool" if dt == torch.bool else "complex" if dt.is_complex else "float" if dt.is_floating_point else "int"

    if kind(source) != kind(dtype):
        raise CheckpointError(f"{what}: tensor {key} is {str(source).removeprefix('torch.')} but the "
                              f"model expects {str(dtype).removeprefix('torch.')} ({kind(dtype)})")


def cast_checked(tensor: torch.Tensor, dtype: torch.dtype, key: str, what: str) -> torch.Tensor:
    """`tensor` cast to `dtype`; CheckpointError if that would change its kind (see `check_cast`)."""
    check_cast(tensor.dtype, dtype, key, what)
    return tensor.to(dtype)


# --- image processing ----------------------------------------------------------------------------------


def _channel_values(d: dict, name: str, default: float, path: Path, channels: int) -> tuple[float, ...]:
    value = d.get(name, default)
    values = [value] * channels if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or len(values) != channels:
        got = f"{len(values)} values" if isinstance(values, list) else _kind(values)
        raise CheckpointError(f"{path}: {name}: expected one number or {channels} (one per channel), got {got}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CheckpointError(f"{path}: {name}: expected finite numbers, got {v!r}")
    return tuple(float(v) for v in values)


def image_stats(path: Path, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(image_mean, image_std) of a preprocessor_config.json (defaults 0.5), checked: one number or one
    per channel (as transformers' `normalize` accepts), finite, std > 0."""
    d = read_json_object(path)
    mean = _channel_values(d, "image_mean", 0.5, path, channels)
    std = _channel_values(d, "image_std", 0.5, path, channels)
    if min(std) <= 0:
        raise CheckpointError(f"{path}: image_std: every value must be > 0, got {list(std)}")
    return mean, std
