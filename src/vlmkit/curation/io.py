"""Streaming curate input (JSONL manifest or tar shards) and resumable output in the same format.

Input rows (see `vlmkit.curation.rules` for the row dict) are numbered in input order
(``__index__``) and read one at a time: memory does not grow with the input. A row that cannot be
used carries ``__error__`` (its reason: bad_json, not_an_object, missing_text, missing_image_field,
missing_json, missing_image, corrupt_shard) and is counted, never raised.

Output. A manifest ``IN/x.jsonl`` gives ``OUT/x.jsonl``: the kept rows, each the input's JSON
object with its image path made absolute; images are *referenced, not copied* (curating 10^6
rows should not double the disk), so the output stays valid wherever it is moved as long as the
images stay. Shards give ``OUT/shards/shard-NNNNNN.tar`` with `shard_size` kept samples each,
every member (image, json, ...) copied byte for byte under its input name. Tar members are
written by hand with fixed metadata (mtime 0, mode 0644, USTAR), so the bytes depend only on the
kept samples, and a writer can resume from a recorded (shard, byte offset): the file is cut back
to that offset and writing continues.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from vlmkit.data.shards import IMAGE_EXTS, TarShardDataset, _resolve_shards, is_shard_source
from vlmkit.errors import DataError

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads an archive to a multiple of this


class CurateInput:
    """A JSONL manifest or tar shards: `rows(start)` streams row dicts from input row `start`."""

    def __init__(self, source: str | Path, text_field: str, image_field: str) -> None:
        self.source = str(source)
        self.text_field, self.image_field = text_field, image_field
        self.kind = "shards" if is_shard_source(source) else "jsonl"
        if self.kind == "shards":
            self.files = _resolve_shards(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise DataError(f"curate input {source} is neither a JSONL manifest nor tar shards")
            self.files = [path]

    def fingerprint(self) -> str:
        """Hash of the input files' resolved paths, sizes and modification times."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def count(self) -> int | None:
        """Rows in the input (for the progress bar's ETA): lines of a manifest, keys of shards."""
        if self.kind == "jsonl":
            with open(self.files[0], "rb") as f:
                return sum(1 for line in f if line.strip())
        try:
            n = 0
            for shard in self.files:
                with tarfile.open(shard, "r:") as tar:
                    n += len({_key(m.name) for m in tar.getmembers() if m.isfile()})
            return n
        except (tarfile.TarError, OSError):
            return None

    def rows(self, start: int = 0) -> Iterator[dict]:
        rows = self._jsonl_rows(start) if self.kind == "jsonl" else self._shard_rows()
        return rows if self.kind == "jsonl" else islice(rows, start, None)

    def _jsonl_rows(self, start: int) -> Iterator[dict]:
        path = self.files[0]
        base = path.parent
        index = 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                index += 1
                if index - 1 < start:
                    continue
                row = {"__index__": index - 1, "__key__": f"{path.name}:{lineno}"}
                try:
                    meta = json.loads(line)
                except ValueError:
                    yield row | {"__error__": "bad_json"}
                    continue
                yield row | self._fields(meta, lambda img: {"image_path": str((base / img).resolve())}, base)

    def _fields(self, meta: object, image, base: Path | None = None) -> dict:
        """meta / text / image of a parsed row, or its ``__error__``; for a manifest (`base`), the
        row as written out (``out_meta``: image paths made absolute)."""
        if not isinstance(meta, dict):
            return {"__error__": "not_an_object"}
        text = meta.get(self.text_field)
        if not isinstance(text, str):
            return {"__error__": "missing_text"}
        img = meta.get(self.image_field)
        if isinstance(img, list) and img and all(isinstance(p, str) for p in img):
            img = img[0]  # several images: the first is measured
        if image is not None and not isinstance(img, str):
            return {"__error__": "missing_image_field"}
        if image is None:
            return {"meta": meta, "text": text}
        field = meta[self.image_field]
        absolute = [str((base / p).resolve()) for p in field] if isinstance(field, list) else str((base / field).resolve())
        return {"meta": meta, "text": text, "out_meta": meta | {self.image_field: absolute}, **image(img)}

    def _shard_rows(self) -> Iterator[dict]:
        index = 0
        for shard in self.files:
            try:
                for raw in TarShardDataset([shard]).iter_raw():
                    yield self._shard_row(raw, index)
                    index += 1
            except DataError:
                yield {"__index__": index, "__key__": str(shard), "__error__": "corrupt_shard"}
                index += 1

    def _shard_row(self, raw: dict, index: int) -> dict:
        row = {"__index__": index, "__key__": raw["__key__"]}
        members = [(k, v) for k, v in raw.items() if not k.startswith("__")]
        if "json" not in raw:
            return row | {"__error__": "missing_json"}
        try:
            meta = json.loads(raw["json"])
        except ValueError:
            return row | {"__error__": "bad_json"}
        fields = self._fields(meta, None)
        images = sorted(e for e, _ in members if e in IMAGE_EXTS)
        if "__error__" not in fields and not images:
            fields = {"__error__": "missing_image"}
        if "__error__" in fields:
            return row | fields
        return row | fields | {"members": members, "image_bytes": raw[images[0]]}


def _key(member: str) -> str:
    """A member's sample key: its path up to the first "." of the file name (webdataset's rule)."""
    parent, _, name = member.rpartition("/")
    return f"{parent}/{name.partition('.')[0]}" if parent else name.partition(".")[0]


def _tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + data + bytes(-len(data) % _BLOCK)


class RowWriter:
    """Kept rows in the input's format; `state()` / `resume(state)` for exact restarts."""

    def __init__(self, out: Path, inp: CurateInput, shard_size: int) -> None:
        self.out, self.kind, self.shard_size = out, inp.kind, shard_size
        self.name = inp.files[0].name if inp.kind == "jsonl" else None
        self.shard, self.count, self.file = 0, 0, None

    def _path(self) -> Path:
        return self.out / self.name if self.kind == "jsonl" else self.out / "shards" / f"shard-{self.shard:06d}.tar"

    def _open(self, offset: int) -> None:
        path = self._path()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "r+b" if path.exists() else "w+b")
        self.file.truncate(offset)
        self.file.seek(offset)

    def write(self, row: dict) -> None:
        if self.file is None:
            self._open(0)
        if self.kind == "jsonl":
            self.file.write((json.dumps(row["out_meta"], ensure_ascii=False) + "\n").encode())
            return
        self.file.write(b"".join(_tar_member(f"{row['__key__']}.{ext}", data) for ext, data in row["members"]))
        self.count += 1
        if self.count == self.shard_size:
            self._close_shard()

    def _close_shard(self) -> None:
        end = bytes(2 * _BLOCK)
        self.file.write(end + bytes(-(self.file.tell() + len(end)) % _RECORD))
        self.file.close()
        self.file, self.shard, self.count = None, self.shard + 1, 0

    def state(self) -> dict:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
        return {"shard": self.shard, "count": self.count, "offset": self.file.tell() if self.file else 0}

    def resume(self, state: dict) -> None:
        """Cut the output back to `state` (what was written after it is redone)."""
        self.shard, self.count = state["shard"], state["count"]
        if self.kind == "shards":
            for old in (self.out / "shards").glob("shard-*.tar"):
                if int(old.stem.split("-")[1]) > self.shard:
                    old.unlink()
        if state["offset"] or self._path().exists():
            self._open(state["offset"])

    def close(self) -> None:
        if self.kind == "shards" and self.count:
            self._close_shard()
        elif self.file is not None:
            self.file.close()
            self.file = None
        if self.kind == "jsonl" and not self._path().exists():
            self._path().write_bytes(b"")  # nothing kept: an empty manifest, not a missing one


def thumbnail_png(image, size: int) -> bytes:
    """A small PNG of a PIL image (for the report's examples)."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()
