"""Parsers for PaliGemma task outputs: detection / segmentation tokens and plain text.

Location convention (one place, used by both directions)
--------------------------------------------------------
PaliGemma squeezes the whole image to a square (no aspect-preserving crop), so a location token
is a fraction of the ORIGINAL width or height; the resize cancels out. `<locK>`, K in [0, 1023],
names bin K of 1024 equal bins, i.e. the interval [K/1024, (K+1)/1024) of the axis. We decode an
edge to the bin START, ``K / 1024 * size``, for near and far edges alike. This is what Google's
reference postprocessing does (the big_vision PaliGemma colab's ``float(x) / 1024.0`` and the
official demo's ``int(x) / 1024``); we encode with the matching inverse, the bin that contains the
coordinate, ``clip(floor(c / size * 1024), 0, 1023)``, so decode(encode(c)) is within one bin
(``size / 1024`` pixels) of ``c``. (big_vision's RefCOCO target builder instead rounds
``c * 1023`` and its evaluator divides by 1023; the two conventions differ by < 1 bin.)

A detection output is ``<locY1><locX1><locY2><locX2> label ; <loc...> label``; segmentation adds
16 ``<segNNN>`` tokens (NNN in [0, 127], a 4x4 grid of VQ-VAE codes) after the four locations.

Parsing is lenient: whatever parses is returned and every skipped or suspicious piece is listed
in ``errors`` (one line each). Only ``strict=True`` turns a non-empty ``errors`` into a
`ParseError`; nothing else is ever raised for any input string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from vlmkit.errors import ConfigError, ParseError

NUM_LOC_BINS = 1024
NUM_SEG_CODES = 128
SEG_TOKENS_PER_OBJECT = 16
OBJECT_SEPARATOR = " ; "

# Tokens that carry no content: dropped from text, and <eos> also ends parsing (what follows is
# padding or junk after the end of generation).
_SPECIAL_TOKENS = frozenset(
    {"<bos>", "<eos>", "<pad>", "<unk>", "<image>", "<start_of_turn>", "<end_of_turn>"}
)
_END_TOKENS = frozenset({"<eos>", "<end_of_turn>"})

# Scanner: every character of the input is covered by exactly one alternative, in this order.
_SCAN = re.compile(
    r"(?P<locseg><(?P<kind>loc|seg)(?P<digits>[0-9]*)>)"  # <loc0123>, <seg042> (checked later)
    r"|(?P<special><[^<>;\s]*>)"  # <eos>, <pad>, <unused3>, ...
    r"|(?P<trunc><[^<>;\s]*)"  # unterminated token, e.g. generation cut inside "<loc01"
    r"|(?P<sep>;)"
    r"|(?P<text>[^<;]+)"
)
_WS = re.compile(r"\s+")
_LEADING_SPECIALS = r"(?:\s|<bos>|<pad>|<image>|<start_of_turn>)*"


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the original image (floats, x right, y down)."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    score: float | None = None


@dataclass(frozen=True)
class SegmentedObject:
    """A box plus its 16 VQ-VAE mask codes (row-major 4x4 grid), or None if the model gave none."""

    box: Box
    codes: tuple[int, ...] | None


@dataclass
class DetectionResult:
    boxes: list[Box] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class SegmentationResult:
    objects: list[SegmentedObject] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _RawObject:
    """One object as scanned, before validation."""

    index: int
    locs: list[str] = field(default_factory=list)  # digit strings, validated later
    segs: list[str] = field(default_factory=list)
    label_parts: list[str] = field(default_factory=list)
    broken: str | None = None


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"image {name} must be a positive int, got {v!r}")


def loc_to_coord(value: int, size: int) -> float:
    """Bin index -> pixel coordinate (bin start) along an axis of `size` pixels."""
    return value / NUM_LOC_BINS * size


def coord_to_loc(coord: float, size: int) -> int:
    """Pixel coordinate -> index of the bin containing it, clipped to [0, 1023]."""
    # The tiny epsilon keeps exact bin edges (c = k*size/1024) in bin k despite float rounding.
    k = math.floor(coord / size * NUM_LOC_BINS + 1e-9)
    return min(max(k, 0), NUM_LOC_BINS - 1)


def _scan(text: str) -> tuple[list[_RawObject], list[str]]:
    """Split generated text into raw objects (a run of <loc>, then <seg>, then label text)."""
    objects: list[_RawObject] = []
    errors: list[str] = []
    cur: _RawObject | None = None

    def start() -> _RawObject:
        obj = _RawObject(index=len(objects))
        objects.append(obj)
        return obj

    for m in _SCAN.finditer(text):
        if m.group("locseg"):
            kind, digits = m.group("kind"), m.group("digits")
            if kind == "loc":
                # A fifth <loc> right after four starts a new object (two boxes, no label).
                if cur is None or cur.segs or cur.label_parts or len(cur.locs) == 4:
                    cur = start()
                cur.locs.append(digits)
            elif cur is None or cur.label_parts:
                errors.append(f"stray <seg> token {m.group()!r} outside an object, skipped")
            else:
                cur.segs.append(digits)
        elif m.group("special"):
            tok = m.group("special")
            if tok in _END_TOKENS:
                break
            if tok not in _SPECIAL_TOKENS:
                _mark(cur, errors, f"unexpected token {_short(tok)}")
        elif m.group("trunc") is not None:
            _mark(cur, errors, f"truncated token {_short(m.group('trunc'))}")
        elif m.group("sep"):
            cur = None
        else:
            chunk = m.group("text")
            if not chunk.strip():
                continue
            if cur is None:
                errors.append(f"text {_short(chunk.strip())} without <loc> tokens, skipped")
            else:
                cur.label_parts.append(chunk)
    return objects, errors


def _short(s: str, n: int = 40) -> str:
    return repr(s if len(s) <= n else s[:n] + "...")


def _mark(cur: _RawObject | None, errors: list[str], msg: str) -> None:
    if cur is None:
        errors.append(f"{msg}, skipped")
    elif cur.broken is None:
        cur.broken = msg


def _strip_echo(text: str, prompt: str | None) -> str:
    """Drop a leading echo of the prompt (decoding the full sequence repeats the prefix)."""
    if not prompt or not prompt.strip():
        return text
    m = re.match(_LEADING_SPECIALS + re.escape(prompt.strip()), text)
    return text[m.end() :] if m else text


def _parse_ints(digits: list[str], n_digits: int, limit: int) -> list[int] | None:
    """Validate fixed-width digit strings without ever calling int() on huge inputs."""
    if any(len(d) != n_digits for d in digits):
        return None
    values = [int(d) for d in digits]
    return values if all(0 <= v < limit for v in values) else None


def _to_box(raw: _RawObject, width: int, height: int) -> tuple[Box | None, str | None]:
    """Validate a raw object's locations and label; return (box, problem)."""
    where = f"object {raw.index}"
    if raw.broken:
        return None, f"{where}: {raw.broken}, skipped"
    if len(raw.locs) != 4:
        return None, f"{where}: expected 4 <loc> tokens, got {len(raw.locs)}, skipped"
    locs = _parse_ints(raw.locs, 4, NUM_LOC_BINS)
    if locs is None:
        bad = ",".join(_short(d, 8) for d in raw.locs)
        return None, f"{where}: <loc> values must be 4 digits in [0, 1023], got {bad}, skipped"
    y1, x1, y2, x2 = locs
    if y2 < y1 or x2 < x1:
        return None, f"{where}: inverted box y1={y1} x1={x1} y2={y2} x2={x2}, skipped"
    label = _WS.sub(" ", "".join(raw.label_parts)).strip()
    box = Box(
        label,
        loc_to_coord(x1, width),
        loc_to_coord(y1, height),
        loc_to_coord(x2, width),
        loc_to_coord(y2, height),
    )
    return box, (None if label else f"{where}: missing label, box kept with label ''")


def _finish(errors: list[str], strict: bool, what: str) -> None:
    if strict and errors:
        raise ParseError(f"{len(errors)} problem(s) in {what} output; first: {errors[0]}")


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise ConfigError(f"expected generated text as str, got {type(text).__name__}")


def parse_detections(
    text: str, width: int, height: int, *, prompt: str | None = None, strict: bool = False
) -> DetectionResult:
    """Parse ``<loc>x4 label ; ...`` into boxes in pixels of the original `width` x `height` image.

    `prompt`, if given, is stripped when the text starts with it (full-sequence decodes echo it).
    Any <seg> tokens are ignored (a segmentation output also parses as detections).
    Raises ParseError only if `strict` and something was skipped; ConfigError for a bad size.
    """
    _check_size(width, height)
    _check_text(text)
    raws, errors = _scan(_strip_echo(text, prompt))
    result = DetectionResult(errors=errors)
    for raw in raws:
        box, problem = _to_box(raw, width, height)
        if box is not None:
            result.boxes.append(box)
        if problem:
            errors.append(problem)
    _finish(errors, strict, "detection")
    return result


def parse_segmentations(
    text: str, width: int, height: int, *, prompt: str | None = None, strict: bool = False
) -> SegmentationResult:
    """Parse ``<loc>x4 <seg>x16 label ; ...`` into boxes plus 16 mask codes each.

    An object with a valid box but no <seg> tokens is kept with ``codes=None`` (and noted in
    ``errors``); one with a wrong number of <seg> tokens or a code outside [0, 127] is skipped.
    """
    _check_size(width, height)
    _check_text(text)
    raws, errors = _scan(_strip_echo(text, prompt))
    result = SegmentationResult(errors=errors)
    for raw in raws:
        box, problem = _to_box(raw, width, height)
        if problem:
            errors.append(problem)
        if box is None:
            continue
        where = f"object {raw.index}"
        if not raw.segs:
            errors.append(f"{where}: no <seg> tokens, box kept without mask")
            result.objects.append(SegmentedObject(box, None))
            continue
        codes = _parse_ints(raw.segs, 3, NUM_SEG_CODES)
        if len(raw.segs) != SEG_TOKENS_PER_OBJECT or codes is None:
            errors.append(
                f"{where}: expected 16 <seg> tokens of 3 digits in [0, 127], "
                f"got {len(raw.segs)}, skipped"
            )
            continue
        result.objects.append(SegmentedObject(box, tuple(codes)))
    _finish(errors, strict, "segmentation")
    return result


def _clean_label(label: str) -> str:
    name = _WS.sub(" ", label).strip()
    if re.search(r"[;<>]", name):
        raise ConfigError(f"label {label!r} must not contain ';', '<' or '>'")
    return name


def _box_locs(box: Box, width: int, height: int) -> str:
    coords = (box.x1, box.y1, box.x2, box.y2)
    if not all(math.isfinite(c) for c in coords):
        raise ConfigError(f"box {box!r} has non-finite coordinates")
    if box.x2 < box.x1 or box.y2 < box.y1:
        raise ConfigError(f"box {box!r} has x2 < x1 or y2 < y1")
    ys_xs = (
        coord_to_loc(box.y1, height),
        coord_to_loc(box.x1, width),
        coord_to_loc(box.y2, height),
        coord_to_loc(box.x2, width),
    )
    return "".join(f"<loc{v:04d}>" for v in ys_xs)


def boxes_to_loc_text(boxes: Iterable[Box], width: int, height: int) -> str:
    """Inverse of `parse_detections`: the training target ``<loc>x4 label ; ...``.

    Coordinates outside the image are clipped to the first/last bin.
    Raises ConfigError for a bad size, inverted/non-finite box or a label with ';', '<' or '>'.
    """
    _check_size(width, height)
    parts = [f"{_box_locs(b, width, height)} {_clean_label(b.label)}" for b in boxes]
    return OBJECT_SEPARATOR.join(parts)


def segments_to_text(objects: Iterable[SegmentedObject], width: int, height: int) -> str:
    """Inverse of `parse_segmentations`: ``<loc>x4 <seg>x16 label ; ...``."""
    _check_size(width, height)
    parts = []
    for obj in objects:
        codes = obj.codes
        if codes is None or len(codes) != SEG_TOKENS_PER_OBJECT:
            raise ConfigError(f"segmented object {obj.box.label!r} needs exactly 16 codes")
        if not all(isinstance(c, int) and 0 <= c < NUM_SEG_CODES for c in codes):
            raise ConfigError(f"segmentation codes must be ints in [0, 127], got {codes}")
        segs = "".join(f"<seg{c:03d}>" for c in codes)
        label = _clean_label(obj.box.label)
        parts.append(f"{_box_locs(obj.box, width, height)}{segs} {label}")
    return OBJECT_SEPARATOR.join(parts)


def clean_text(text: str, *, prompt: str | None = None, keep_newlines: bool = False) -> str:
    """Caption / answer / OCR output -> plain text.

    Cuts at the first <eos>/<end_of_turn>, drops other special tokens (<bos>, <pad>, <image>, ...),
    strips an echoed `prompt` (decoding the full sequence repeats the prefix and its "\\n"), and
    collapses whitespace (keeping single line breaks if `keep_newlines`, useful for OCR).
    """
    _check_text(text)
    text = _strip_echo(text, prompt)
    for end in _END_TOKENS:
        text = text.split(end, 1)[0]
    for tok in _SPECIAL_TOKENS:
        text = text.replace(tok, "")
    if keep_newlines:
        lines = (_WS.sub(" ", line).strip() for line in text.splitlines())
        return "\n".join(line for line in lines if line)
    return _WS.sub(" ", text).strip()
