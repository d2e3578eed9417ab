"""Reading and writing safetensors checkpoints: single files, sharded folders, atomically.

Only safetensors are read (never pickle); a shard index may only name files inside its folder.

Reading is memory-lean: each tensor is read with plain `readinto` calls straight into a tensor
of its *final* dtype and device, one at a time. A tensor whose dtype changes (a float32 folder
loaded in bf16) is converted in chunks of `CHUNK_BYTES`, so the only temporary is one chunk.
Why not `safe_open(...).get_tensor`: it memory-maps the file, and every page it touches stays
resident in the process (and counted in its RSS) while the handle is open, so loading a float32
folder in bf16 peaked at file size + model size (14.4 GB for a 4.8 GB bf16 3B model); here the
peak is the model plus one chunk.
"""

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmkit.errors import CheckpointError
from vlmkit.outputs import atomic_folder  # noqa: F401 - re-exported: checkpoints are written with it
from vlmkit.validate import shard_index

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CHUNK_BYTES = 32 << 20  # source bytes converted per step when a tensor changes dtype
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header

DTYPES = {  # safetensors dtype names -> torch
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class Entry:
    """Where one tensor's bytes are: `path`, absolute byte range [start, end), its dtype and shape."""

    path: Path
    dtype: str  # safetensors name, e.g. "F32"
    shape: tuple[int, ...]
    start: int
    end: int


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({why})")


def _entry(path: Path, key: str, info, data_start: int, size: int) -> Entry:
    if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
        raise _bad(path, f"tensor {key}: unknown dtype {info.get('dtype') if isinstance(info, dict) else info!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)
            or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)):
        raise _bad(path, f"tensor {key}: bad shape or data_offsets")
    nbytes = math.prod(shape) * DTYPES[info["dtype"]].itemsize
    begin, stop = data_start + offsets[0], data_start + offsets[1]
    if offsets[0] < 0 or stop - begin != nbytes or stop > size:
        raise _bad(path, f"tensor {key}: data_offsets {offsets} do not hold {nbytes} bytes inside the file")
    return Entry(path, info["dtype"], tuple(shape), begin, stop)


def read_header(path: Path) -> dict[str, Entry]:
    """Every tensor of one .safetensors file, from its header (8-byte length + JSON), data unread."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(MAX_HEADER_BYTES, size - 8):
                raise _bad(path, "header length out of range")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, str(e)) from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    return {k: _entry(path, k, v, 8 + n, size) for k, v in header.items() if k != "__metadata__"}


def _read_exact(f, view: memoryview) -> None:
    while view.nbytes:
        n = f.readinto(view)
        if not n:
            raise CheckpointError(f"{f.name} ended early (truncated safetensors file)")
        view = view[n:]


class SafetensorsReader:
    """Reader over `model.safetensors` or a sharded `model.safetensors.index.json` folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        self._entries: dict[str, Entry] = {}
        if (folder / INDEX_NAME).is_file():
            self._read_index(folder / INDEX_NAME)
        elif (folder / SINGLE_NAME).is_file():
            self._entries = read_header(folder / SINGLE_NAME)
        else:
            found = sorted(p.name for p in folder.glob("*"))[:10]
            if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in found):
                raise CheckpointError(f"{folder} has only pickle weights ({', '.join(found)}); vlmkit loads safetensors only")
            raise CheckpointError(f"{folder} has no {SINGLE_NAME} or {INDEX_NAME}")

    def _read_index(self, path: Path) -> None:
        headers: dict[Path, dict[str, Entry]] = {}
        for key, shard_path in shard_index(path, self.folder).items():
            if not shard_path.is_file():
                raise CheckpointError(f"{path} lists shard {shard_path.name} which does not exist")
            if shard_path not in headers:
                headers[shard_path] = read_header(shard_path)
            if key not in headers[shard_path]:
                raise CheckpointError(f"{path} puts {key} in {shard_path.name}, which does not hold it")
            self._entries[key] = headers[shard_path][key]

    def keys(self) -> list[str]:
        return list(self._entries)

    def header(self, key: str) -> tuple[list[int], str]:
        """(shape, safetensors dtype name) of a tensor, from the header, without its data."""
        e = self._entries[key]
        return list(e.shape), e.dtype

    def dtype(self, key: str) -> torch.dtype:
        return DTYPES[self._entries[key].dtype]

    def get(self, key: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
            rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `key` as `dtype` (default: its own) on `device`, read without a full-size temporary;
        `rows=(start, stop)`: only those rows (along dim 0) of it."""
        e = self._entries[key]
        if rows is not None:
            start, stop = rows
            if not (e.shape and 0 <= start <= stop <= e.shape[0]):
                raise CheckpointError(f"{e.path}: rows {rows} are outside tensor {key} of shape {e.shape}")
            row = (e.end - e.start) // e.shape[0] if e.shape[0] else 0  # bytes per row
            e = Entry(e.path, e.dtype, (stop - start, *e.shape[1:]), e.start + start * row, e.start + stop * row)
        src = DTYPES[e.dtype]
        out = torch.empty(e.shape, dtype=dtype or src, device=device)
        flat = out.view(-1)  # [numel]; a fresh tensor is contiguous
        with open(e.path, "rb", buffering=0) as f:
            f.seek(e.start)
            if out.dtype == src and out.device.type == "cpu":
                _read_exact(f, memoryview(flat.view(torch.uint8).numpy()))
                return out
            per = max(1, CHUNK_BYTES // src.itemsize)
            buf = torch.empty(min(per, flat.numel()), dtype=src)  # the one temporary: a chunk
            for i in range(0, flat.numel(), per):
                part = buf[: min(per, flat.numel() - i)]
                _read_exact(f, memoryview(part.view(torch.uint8).numpy()))
                flat[i:i + part.numel()].copy_(part)  # cast (round to nearest even) and/or move
        return out


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
