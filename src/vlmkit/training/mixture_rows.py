"""Readers of a mixture's text-only and interleaved sources (see `vlmkit.data.mixture`).

Rows and the samples they become (the family's train format lays samples out; see
`vlmkit.training.mixture`):

    text         {"text": str}                        -> {"document": [text], "images": []}
                 {"prefix": str, "suffix": str}       -> {"prefix", "suffix", "images": []}
                 {"messages": [...]} (no image items) -> {"messages", "images": []}   (chat formats)
    interleaved  {"texts": [...], "images": [...]}    -> {"document": [str | None], "images": [PIL]}
                 OBELICS-style: two lists of one length, each place holding a text or an image
                 path (the other null); None in "document" is where an image sits
                 {"images", "videos", "messages"}      -> {"messages", "images": [PIL | Video]}  (chat
                 with images or videos                    formats; a video as in `vlmkit.training.chat`)

Both readers are `JsonlDataset`s: the same validation, bad-row skipping or one-line errors naming
file and line, and `max_len` filtering with the caller's exact token count of a sample. The same
rows can come from tar shards (`vlmkit.training.mixture_shards`). A chat row's media become the
sample `ChatJsonlDataset` makes of it (`chat_sample`: one definition), so a video row trains in an
interleaved source exactly as in an image-text one; a video row for a processor without videos,
or a text-only row with videos, is a bad row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from vlmkit.data.datasets import JsonlDataset
from vlmkit.data.image import load_image
from vlmkit.data.video import FrameRule, Video
from vlmkit.errors import ImageError
from vlmkit.training.chat import (as_conversation, chat_problem, chat_sample, listed_frames, read_video,
                                  video_problem)

Problem = tuple[str, str] | None
NO_IMAGE = ("no_image", "has no image; put it in a text source")
CHAT_ONLY = ("chat_row", "is a chat row ({messages}); this model's train format reads prefix/suffix rows only")


def _bad_object(row: object) -> Problem:
    if not isinstance(row, dict):
        return "bad_json", "is not valid JSON" if row is None else f"is not a JSON object (got {type(row).__name__})"
    return None


def _pair_problem(row: dict) -> Problem:
    for key in ("prefix", "suffix"):
        if not isinstance(row.get(key), str):
            got = json.dumps(row.get(key))[:40]
            return "missing_field", f'needs "text", or "prefix" and "suffix" as strings, got {key}={got}'
    return ("empty_suffix", 'has an empty "suffix"') if not row["suffix"].strip() else None


def text_problem(row: object, chat: bool) -> Problem:
    """(skip reason, what is wrong) of a text-only row, or None; `chat`: the format reads chat rows."""
    bad = _bad_object(row)
    if bad:
        return bad
    if row.get("image") or row.get("images"):
        return "has_image", "has an image; put rows with images in an image-text or interleaved source"
    if row.get("videos"):
        return "has_video", "has a video; put rows with videos in an image-text or interleaved source"
    if "messages" in row:
        return chat_problem(row) if chat else CHAT_ONLY
    if "text" in row:
        if isinstance(row["text"], str) and row["text"].strip():
            return None
        return "missing_field", f'needs "text" as a non-empty string, got {json.dumps(row["text"])[:40]}'
    return _pair_problem(row)


def document_problem(row: object, chat: bool) -> Problem:
    """(skip reason, what is wrong) of an interleaved row, or None."""
    bad = _bad_object(row)
    if bad:
        return bad
    if "messages" in row:
        if not chat:
            return CHAT_ONLY
        return chat_problem(row) or (None if row.get("images") or row.get("videos") else NO_IMAGE)
    if row.get("videos"):
        return "bad_video", 'has "videos": a document places images; put videos in chat rows ({messages})'
    texts, images = row.get("texts"), row.get("images")
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        return "missing_field", 'needs "texts" and "images" as lists of one length (null where the other one is)'
    for i, (t, p) in enumerate(zip(texts, images)):
        if (t is None) == (p is None) or not isinstance(t if p is None else p, str):
            return "bad_place", f"place {i} must hold exactly one of a text string and an image path"
    if all(p is None for p in images):
        return NO_IMAGE
    if not any(t and t.strip() for t in texts if t is not None):
        return "no_text", "has no text to train on"
    return None


class _MixtureRows(JsonlDataset):
    """A JsonlDataset of one mixture kind; `length(sample)` counts a sample's tokens for `max_len` and
    `budget` (token-budget batching, as `JsonlDataset`'s). `processor` (the family's, when known)
    says whether chat rows may hold videos; a video source gives at most `video_frames` frames,
    rounded to the processor's temporal patch, or `video_fps` a second within that (`FrameRule`)."""

    def __init__(self, manifest: str | Path, image_root: str | Path | None = None, validate: bool = True, *,
                 chat: bool, max_len: int | None = None, length: Callable[[dict], int] | None = None,
                 bad_rows: str = "skip", budget: int | None = None, processor=None, video_frames: int = 16,
                 video_fps: float | None = None):
        self.chat, self._length, self._validate, self.processor = chat, length, validate, processor
        self.frames = FrameRule.of(video_frames, processor, video_fps, "data.video_frames")
        super().__init__(manifest, image_root, validate, max_len=max_len, length_fn=self._tokens, bad_rows=bad_rows,
                         budget=budget)

    def problem(self, row: object) -> Problem:
        raise NotImplementedError

    def _tokens(self, row: dict) -> int:
        try:
            sample = self._sample(row)
        except (ImageError, OSError):
            return 0  # the image check that follows reports the row
        return self._length(sample) if self._length is not None else 0

    def _row_problem(self, row: object, max_len: int | None) -> Problem:
        problem = self.problem(row)
        if problem is None and max_len is not None and self.length_fn(row) > max_len:  # remembered for the budget
            return "too_long", f"is longer than max_len={max_len}"
        return problem

    def _sample(self, row: dict) -> dict:
        raise NotImplementedError

    @staticmethod
    def _image(ref) -> object:
        """The RGB PIL image one of `_paths(row)` names (tar sources: a member, not a path)."""
        return load_image(ref)

    def __getitem__(self, index: int) -> dict:
        return self._with_length(index, self._sample(self.rows[index]))


class TextRows(_MixtureRows):
    """Text-only rows: {text}, {prefix, suffix}, and chat rows without images when `chat`."""

    def problem(self, row: object) -> Problem:
        return text_problem(row, self.chat)

    def _paths(self, row: dict) -> list[Path]:
        return []

    def _sample(self, row: dict) -> dict:
        if "messages" in row:
            return {"messages": as_conversation(row)[0], "images": []}
        if "text" in row:
            return {"document": [row["text"]], "images": []}
        return {"prefix": row["prefix"], "suffix": row["suffix"], "images": []}


class DocumentRows(_MixtureRows):
    """Interleaved documents: OBELICS-style {texts, images}, and chat rows with images or videos when `chat`."""

    def problem(self, row: object) -> Problem:
        problem = document_problem(row, self.chat)
        if problem is None and "messages" in row:
            return video_problem(row, self.processor, self._video_root(), self.frames)
        return problem

    def _video_root(self) -> Path | None:
        """Where video sources are checked for frames up front (None: not checked)."""
        return self.image_root if self._validate else None

    def _ref(self, row: dict, name: str) -> object:
        """What one image (or frame) name of `row` is read from (`_image`)."""
        return self.image_root / name

    def _paths(self, row: dict) -> list:
        """The images to check: the row's images and the frames its videos list."""
        names = [p for p in row.get("images", []) if p is not None]
        return [self._ref(row, name) for name in [*names, *listed_frames(row)]]

    def _video(self, row: dict, entry) -> Video:
        return read_video(entry, self.image_root, self.frames)

    def _sample(self, row: dict) -> dict:
        if "messages" in row:
            return chat_sample(row, lambda name: self._image(self._ref(row, name)), lambda v: self._video(row, v))
        return {"document": list(row["texts"]), "images": [self._image(self._ref(row, p))
                                                           for p in row["images"] if p is not None]}
