"""Reading and writing safetensors checkpoints: single files, sharded folders, atomically.

Only safetensors are read (never pickle); a shard index may only name files inside its folder. Tensors are read lazily one at a time from memory-mapped
files, so loading a model needs about its own size in RAM, not twice that.
"""

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vlmkit.errors import CheckpointError
from vlmkit.outputs import atomic_folder  # noqa: F401 - re-exported: checkpoints are written with it
from vlmkit.validate import shard_index

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsReader:
    """Lazy reader over `model.safetensors` or a sharded `model.safetensors.index.json` folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        if (folder / INDEX_NAME).is_file():
            self._read_index(folder / INDEX_NAME)
        elif (folder / SINGLE_NAME).is_file():
            self._where = {k: folder / SINGLE_NAME for k in self._open(folder / SINGLE_NAME).keys()}
        else:
            found = sorted(p.name for p in folder.glob("*"))[:10]
            if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in found):
                raise CheckpointError(f"{folder} has only pickle weights ({', '.join(found)}); vlmkit loads safetensors only")
            raise CheckpointError(f"{folder} has no {SINGLE_NAME} or {INDEX_NAME}")

    def _read_index(self, path: Path) -> None:
        for key, shard_path in shard_index(path, self.folder).items():
            if not shard_path.is_file():
                raise CheckpointError(f"{path} lists shard {shard_path.name} which does not exist")
            self._where[key] = shard_path

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
        return self._handles[path]

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> torch.Tensor:
        return self._open(self._where[key]).get_tensor(key)

    def header(self, key: str) -> tuple[list[int], str]:
        """(shape, safetensors dtype name) of a tensor, read from the header without its data."""
        sl = self._open(self._where[key]).get_slice(key)
        return sl.get_shape(), sl.get_dtype()


def write_state_dict(
    tensors: Mapping[str, torch.Tensor], folder: Path, max_shard_bytes: int = 4 << 30, metadata=None
) -> None:
    """Write tensors as `model.safetensors`, or as shards plus an index when over `max_shard_bytes`."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.detach().contiguous().cpu()
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_NAME), metadata=meta)
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=meta)
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
