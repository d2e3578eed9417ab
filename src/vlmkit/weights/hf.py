"""Load and save Hugging Face checkpoint folders (config.json + safetensors) strictly.

Families are data: each `FamilySpec` of `vlmkit.models.registry` names how to read/write its
config, its key table, which checkpoint prefixes are aliases, and which checkpoint keys are known
but unused. Models are built on the meta device and filled tensor by tensor from memory-mapped
files, so a 3B model loads in about its own size of RAM.
"""

import json
from pathlib import Path

import torch
from torch import nn

from vlmkit.errors import CheckpointError
from vlmkit.models.registry import FamilySpec, family_for_model_type, family_of
from vlmkit.weights.convert import convert_strict, rename
from vlmkit.weights.dtype import resolve_dtype
from vlmkit.validate import build_config, check_cast, read_json_object
from vlmkit.weights.safetensors_io import INDEX_NAME, SafetensorsReader, atomic_folder, write_state_dict

CONFIG_NAME = "config.json"
# Buffers that some exports include but that we recompute.
_BUFFER_KEYS = [r"rotary_emb\.inv_freq$", r"position_ids$"]


def read_config(folder: str | Path) -> tuple[dict, FamilySpec]:
    """Read `config.json` and find its family; CheckpointError naming the problem otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder" if folder.exists()
                              else f"checkpoint folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}")
    d = read_json_object(path)
    return d, family_for_model_type(d.get("model_type"), str(path))


def open_model(folder: str | Path) -> tuple[nn.Module, FamilySpec, SafetensorsReader]:
    """(the model a HF folder's config.json describes, built on the meta device; its family; a
    reader over its safetensors, headers read, no data). CheckpointError naming the problem."""
    d, fam = read_config(folder)
    cfg = build_config(fam.config_from_hf, d, Path(folder) / CONFIG_NAME)
    reader = SafetensorsReader(folder)
    with torch.device("meta"):
        model = fam.model_class(cfg)
    return model, fam, reader


def load_hf(folder: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model a HF folder describes and load its weights strictly.

    Args:
        folder: a folder with config.json and model.safetensors (or a sharded index).
        dtype: "float32"/"bfloat16"/"float16"/"auto"/None (None or "auto": see `resolve_dtype`).
        device: where the weights end up.
    """
    model, fam, reader = open_model(folder)
    dtype = resolve_dtype(dtype, device)
    # Each tensor is read straight into its final dtype and device (no full-size temporary).
    state = load_state(reader, fam, model.cfg, model, dtype, str(folder), device=device)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


class Pending:
    """A checkpoint tensor not read yet: its `shape` (from the file header); `read()` reads it as
    the planned dtype on the planned device, `read(start, stop)` only those rows (dim 0)."""

    def __init__(self, shape: tuple[int, ...], reader, name: str, dtype: torch.dtype, device):
        self.shape, self._args = shape, (reader, name, dtype, device)

    def read(self, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        reader, name, dtype, device = self._args
        return reader.get(name, dtype, device, rows=None if start is None else (start, stop))


def plan_state(reader, fam: FamilySpec, cfg, model: nn.Module, dtype: torch.dtype, what: str,
               device: str | torch.device = "cpu") -> dict[str, Pending]:
    """{our name: `Pending`} for every tensor of `model`, checked strictly (names, shapes, dtype
    kinds) against the checkpoint's headers before any data is read."""
    original = {fam.normalise_key(k): k for k in reader.keys()}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    drop = [*_BUFFER_KEYS, *fam.dropped_keys(cfg)]

    def pending(key: str) -> Pending:
        name = original[key]
        check_cast(reader.dtype(name), dtype, name, what)
        return Pending(tuple(reader.header(name)[0]), reader, name, dtype, device)

    return convert_strict(original, pending, shapes, fam.table(cfg), reverse=True, drop=drop, what=what)


def load_state(reader, fam: FamilySpec, cfg, model: nn.Module, dtype: torch.dtype, what: str,
               device: str | torch.device = "cpu") -> dict:
    """Convert a checkpoint's tensors to `model`'s names, strictly, as `dtype` on `device`."""
    return {k: p.read() for k, p in plan_state(reader, fam, cfg, model, dtype, what, device).items()}


def save_hf(model: nn.Module, folder: str | Path, max_shard_bytes: int = 4 << 30, extra_files=None,
            overwrite: bool = True) -> Path:
    """Write `model` as a HF folder (config.json + safetensors) atomically, in the hub layout.

    `extra_files` maps file names to source paths copied in (e.g. tokenizer files). A non-empty
    `folder` is refused unless `overwrite`; then same-named files are replaced, others kept
    (see `vlmkit.outputs.atomic_folder`).
    """
    fam = family_of(model)
    table = fam.table(model.cfg)
    tensors = {}
    for key, tensor in model.state_dict().items():
        name = rename(key, table)
        if name is None:
            raise CheckpointError(f"parameter {key} has no entry in the {fam.model_types[0]} mapping table")
        tensors[fam.to_hub_name(name)] = tensor
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    config = {**fam.config_to_hf(model.cfg), "torch_dtype": dtype}
    with atomic_folder(folder, overwrite, stale=(INDEX_NAME,)) as tmp:
        write_state_dict(tensors, tmp, max_shard_bytes)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        for name, src in (extra_files or {}).items():
            (tmp / name).write_bytes(Path(src).read_bytes())
    return Path(folder)
