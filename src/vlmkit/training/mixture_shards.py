"""Text-only and interleaved mixture sources as webdataset-style tar shards.

Layout: the image-text shards' convention (`vlmkit.data.shards`): consecutive members sharing a
key (the member path up to the first "." of its file name) form one sample.

    text         KEY.json   a text row as in a manifest ({text}, {prefix, suffix}, {messages}),
                 or KEY.txt  alone: {"text": its UTF-8 content}
    interleaved  KEY.json   {"texts": [str | null, ...], "images": [null | NAME, ...]}, or a chat
                            row {"images": [NAME, ...], "videos": [[NAME, ...] | {"frames": [NAME,
                            ...], "fps": 2.0}, ...], "messages": [...]}: a video is its frames
                 KEY.NAME   every image (and video frame) the row names; NAME is the member's
                            extension ("0.png" for doc7.0.png) or its whole file name ("doc7.0.png")

A video in a shard is its frames as image members, never one video file or animated image member:
the decoders read videos by path, and nothing is extracted to disk (below); a row naming a video
source instead of its frames is a bad row.

The readers are the manifest readers (`TextRows`, `DocumentRows`) with rows taken from the
shards instead of lines: map-style, indexed once at construction (member headers and the small
.json / .txt members; with `validate` every named image is decoded once), so bad samples are bad
rows found before training, named "SHARD:KEY" where a manifest row is named "FILE:LINE" (skipped
and counted, or one `DataError` line with ``bad_rows="error"``; a `.json` that does not parse,
a named image that is not a member of the sample, a sample with neither .json nor .txt). A
corrupt or truncated shard is a `DataError`.

Nothing is extracted to disk: a document's image names resolve only to regular-file members of
its own sample, read by their byte offset in the shard, so no name reaches a path outside it
("../x.png", "/etc/passwd" are names of no member: bad rows); a sample holding a link member
(symbolic or hard) is a bad row. Shard files come in sorted order (as `TarShardDataset` lists
them) and samples in tar order, so shuffling and exact resume are those of a manifest of the
same rows.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmkit.data.image import load_image
from vlmkit.data.shards import IMAGE_EXTS, _resolve_shards, check_end, is_shard_source, split_member
from vlmkit.data.video import Video
from vlmkit.errors import DataError, ImageError
from vlmkit.training.chat import listed_frames, video_entry
from vlmkit.training.mixture_rows import DocumentRows, Problem, TextRows, _MixtureRows


@dataclass(frozen=True)
class Member:
    """A regular-file member of a shard, read by its data offset (no extraction)."""

    shard: str
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise DataError(f"tar shard {self.shard}: member {self.name} is truncated")
        return data


@dataclass(frozen=True)
class BadSample:
    """A sample that cannot become a row (the reason is counted, `what` shown)."""

    reason: str
    what: str


def shard_samples(shard: Path) -> Iterator[tuple[str, dict[str, Member], list[str]]]:
    """(key, {extension: member}, names of link members) of each sample of `shard`, in tar order."""
    try:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            key, members, links = None, {}, []
            for info in tar:
                if info.isdir():
                    continue
                k, ext = split_member(info.name)
                if key is not None and k != key:
                    yield key, members, links
                    members, links = {}, []
                key = k
                if info.isfile():
                    members[ext.lower()] = Member(str(shard), info.name, info.offset_data, info.size)
                else:
                    links.append(info.name)  # symlinks, hard links, devices: never followed
            if key is not None:
                yield key, members, links
            check_end(f, tar)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"tar shard {shard} is corrupt ({exc})") from None


def _images(members: dict[str, Member]) -> dict[str, Member]:
    """A sample's image members under both names a document may use (extension, file name)."""
    out = {}
    for ext, m in members.items():
        if ext.rpartition(".")[2] in IMAGE_EXTS:
            out[ext] = out[m.name.rpartition("/")[2]] = m
    return out


class _ShardRows(_MixtureRows):
    """A mixture reader whose rows are the samples of tar shards (module doc)."""

    _many_files = True
    text_member = False  # whether a lone KEY.txt is a row ({"text": ...})

    def _entries(self) -> Iterator[tuple[str, object]]:
        for shard in _resolve_shards(str(self.manifest)):
            for key, members, links in shard_samples(shard):
                yield f"{shard}:{key}", self._shard_row(members, links)

    def _shard_row(self, members: dict[str, Member], links: list[str]) -> object:
        """The row of one sample: its parsed .json (None if it does not parse) plus its image
        members under ``__members__``, or a `BadSample`."""
        if links:
            return BadSample("link_member", f"has a link member {links[0]}; links are refused")
        if "json" in members:
            try:
                row = json.loads(members["json"].read())
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                return None
        elif "txt" in members and self.text_member:
            try:
                row = {"text": members["txt"].read().decode("utf-8")}
            except UnicodeDecodeError:
                return BadSample("bad_text", "has a .txt member that is not UTF-8")
        else:
            return BadSample("missing_member", "has no .json member" + (" (nor .txt)" if self.text_member else ""))
        return row | {"__members__": _images(members)} if isinstance(row, dict) else row

    def problem(self, row: object) -> Problem:
        if isinstance(row, BadSample):
            return row.reason, row.what
        return super().problem(row) or self.member_problem(row)

    def member_problem(self, row: dict) -> Problem:
        raise NotImplementedError

    @staticmethod
    def _check_image(member: Member) -> Problem:
        try:
            load_image(member.read())
        except (DataError, ImageError) as e:
            return "unreadable_image", f"has image member {member.name}, which cannot be read ({e})"
        return None

    @staticmethod
    def _image(member: Member) -> object:
        return load_image(member.read())


class ShardTextRows(_ShardRows, TextRows):
    """Text-only samples: KEY.json (a text row) or KEY.txt, and no image member."""

    text_member = True

    def member_problem(self, row: dict) -> Problem:
        if row["__members__"]:
            return "has_image", "has image members; put samples with images in an image-text or interleaved source"
        return None


class ShardDocumentRows(_ShardRows, DocumentRows):
    """Interleaved samples: KEY.json (a document or chat row) and the image members it names."""

    def member_problem(self, row: dict) -> Problem:
        for i, entry in enumerate(row.get("videos", [])):
            if isinstance(video_entry(entry)[0], str):
                return "bad_video", (f"names video {video_entry(entry)[0]!r} as video {i}; in a tar shard a video "
                                     "is the list of its frames' image members")
        for name in [*row.get("images", []), *listed_frames(row)]:
            if name is not None and name not in row["__members__"]:
                return "missing_member", f"names image {name!r}, which is not a member of its sample"
        return None

    def _video_root(self) -> None:
        return None  # its videos are frame members, checked as images

    def _ref(self, row: dict, name: str) -> Member:
        return row["__members__"][name]

    def _video(self, row: dict, entry) -> Video:
        frames, fps = video_entry(entry)
        return Video([self._image(self._ref(row, name)) for name in frames], fps=fps)


def mixture_reader(kind: str, source: str) -> type[_MixtureRows]:
    """The reader of a text-only or interleaved source (a manifest or tar shards)."""
    shards = is_shard_source(source)
    if kind == "text":
        return ShardTextRows if shards else TextRows
    return ShardDocumentRows if shards else DocumentRows
