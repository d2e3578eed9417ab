"""Webdataset-style tar shards: `TarShardDataset`, and the per-sample skip accounting.

Members grouped by key (e.g. ``000001_00.png`` + ``000001_00.json``) form one sample; shards are
read as a stream, never all in memory. A sample that cannot be used raises `SampleError`, whose
`reason` is counted in a `skipped` counter and summarised in one warning per pass
(`_decode_or_count`, `_warn_skipped`, shared with `vlmkit.data.datasets.ShuffledStream`, which
buffers undecoded shard samples). `is_shard_source` tells a shard source from a manifest;
`shard_texts` reads every sample's prefix/suffix without decoding images.
"""

from __future__ import annotations

import glob
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from vlmkit.data.image import load_image
from vlmkit.errors import DataError, ImageError

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "bmp"})


class SampleError(DataError):
    """A single sample is unusable; `reason` is its key in a `skipped` counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _summary(counts: Counter) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))



def _resolve_shards(shards: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(shards, (str, Path)):
        p = Path(shards)
        if p.is_dir():
            found = sorted(p.glob("*.tar"))
        elif p.is_file():
            found = [p]
        else:
            found = [Path(s) for s in sorted(glob.glob(str(shards)))]
    else:
        found = [Path(s) for s in shards]
    if not found:
        raise DataError(f"no tar shards found at {shards}")
    missing = [str(s) for s in found if not s.is_file()]
    if missing:
        raise DataError(f"tar shards do not exist: {', '.join(missing[:3])}")
    return found


def split_member(name: str) -> tuple[str, str]:
    """(sample key, extension) of a member: its path up to the first "." of the file name, and
    the rest (webdataset's rule): ``a/0001.0.png`` -> (``a/0001``, ``0.png``)."""
    parent, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{parent}/{stem}" if parent else stem), ext


def check_end(f, tar: tarfile.TarFile) -> None:
    """Raise `tarfile.ReadError` unless the archive `tar` (read from file `f` to its end) is
    complete: tarfile takes a cut-off header for the end of the archive, while a complete tar ends
    with two zero blocks right after the last member."""
    f.seek(tar.offset)
    if f.read(1024) != bytes(1024):
        raise tarfile.ReadError("no end-of-archive marker, file is truncated")


class TarShardDataset(torch.utils.data.IterableDataset):
    """Webdataset-style tar shards: consecutive members sharing a key form one sample.

    The key is the member path up to the first "." of its file name (webdataset's rule), the
    rest is the extension: ``a/0001.png`` + ``a/0001.json`` -> key ``a/0001``. Images decode to
    RGB PIL under ``image``; a ``.json`` member is merged into the sample; ``.txt`` goes under
    ``txt``. Shards are read in streaming mode, one member at a time. Samples that cannot be
    decoded or lack prefix/suffix are skipped, counted in `.skipped` and summarised in a warning
    at the end of each pass. A corrupt shard raises `DataError`.
    """

    def __init__(self, shards: str | Path | Sequence[str | Path]) -> None:
        self.shards: list[Path] = _resolve_shards(shards)
        self.skipped: Counter = Counter()

    def iter_raw(self, shards: Sequence[Path] | None = None) -> Iterator[dict[str, bytes | str]]:
        """Undecoded samples ``{"__key__": key, ext: bytes, ...}`` (cheap to buffer or skip)."""
        for shard in self.shards if shards is None else shards:
            try:
                with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    yield from self._group(tar, str(shard))
                    check_end(f, tar)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DataError(f"tar shard {shard} is corrupt ({exc})") from None

    @staticmethod
    def _group(tar: tarfile.TarFile, shard: str) -> Iterator[dict]:
        current: dict = {}
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_member(member.name)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current = current or {"__key__": key, "__shard__": shard}
            data = tar.extractfile(member).read()
            if len(data) != member.size:  # tarfile's stream mode returns short reads silently
                raise tarfile.ReadError(f"member {member.name} is truncated")
            current[ext.lower()] = data
        if current:
            yield current

    @staticmethod
    def decode(raw: dict) -> dict:
        """Decode one raw sample; raises `SampleError` naming the key if it is unusable."""
        sample = {"__key__": raw["__key__"], "__shard__": raw["__shard__"]}
        try:
            if "json" in raw:
                meta = json.loads(raw["json"])
                if not isinstance(meta, dict):
                    raise ValueError("json is not an object")
                sample |= meta
            if "txt" in raw:
                sample["txt"] = raw["txt"].decode("utf-8")
            exts = sorted(e for e in raw if e in IMAGE_EXTS)
            if exts:
                sample["image"] = load_image(raw[exts[0]])
        except (ValueError, ImageError) as exc:
            msg = f"sample {raw['__key__']} in {raw['__shard__']}: {exc}"
            raise SampleError("undecodable", msg) from None
        if "image" not in sample or not isinstance(sample.get("prefix"), str):
            raise SampleError("missing_field", f"sample {raw['__key__']} lacks an image or prefix")
        if not isinstance(sample.get("suffix"), str) or not sample["suffix"].strip():
            raise SampleError("empty_suffix", f"sample {raw['__key__']} has an empty suffix")
        return sample

    def __iter__(self) -> Iterator[dict]:
        """All samples in shard order; DataLoader worker w of n reads shards w, w + n, ..."""
        info = torch.utils.data.get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        before = sum(self.skipped.values())
        for raw in self.iter_raw(shards):
            sample = _decode_or_count(self.decode, raw, self.skipped)
            if sample is not None:
                yield sample
        _warn_skipped(self.skipped, before, "tar shards")


def _decode_or_count(decode: Callable[[dict], dict], raw, skipped: Counter) -> dict | None:
    try:
        return decode(raw)
    except SampleError as exc:
        skipped[exc.reason] += 1
        return None


def _warn_skipped(skipped: Counter, before: int, what: str) -> None:
    if sum(skipped.values()) > before:
        log.warning("%s: skipped %d samples so far (%s)", what, sum(skipped.values()),
                    _summary(skipped))  # fmt: skip



def is_shard_source(source: str | Path) -> bool:
    """True if `source` names tar shards (a .tar file, a glob, or a folder of .tar files)."""
    s, p = str(source), Path(source)
    return s.endswith(".tar") or "*" in s or (p.is_dir() and any(p.glob("*.tar")))


def shard_texts(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Prefix and suffix strings of every sample's `.json` member, without decoding images."""
    texts = []
    for raw in TarShardDataset(shards).iter_raw():
        try:
            meta = json.loads(raw.get("json", b"null"))
        except ValueError:
            continue
        if isinstance(meta, dict):
            texts += [meta[k] for k in ("prefix", "suffix") if isinstance(meta.get(k), str)]
    return texts
