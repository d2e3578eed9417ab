"""Input checks shared by the native-resolution processors (Pixtral / Mistral 3, Qwen2-VL).

Such a processor reads each image at its own size, within a budget (Pixtral's longest edge,
Qwen2-VL's max_pixels). Two sizes are worth a word:

- an image with a side shorter than one patch holds less than one token of picture; the
  processors would blow it up to a whole patch of interpolated pixels (transformers' do), which
  is never what a 1-pixel-high strip or a tracking pixel meant: refused, one line naming it;
- an image over the budget is resized down, as transformers' processors do; that is normal, but a
  user reading fine print may want to know: with `vlmkit generate --verbose` the processor says
  so in one line per image (a note on the `vlmkit.data.processors` logger, `show_notes`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from vlmkit.errors import DataError

log = logging.getLogger("vlmkit.data.processors")


def _name(src) -> str:
    return f"image {src}" if isinstance(src, (str, Path)) else "an image"


def check_not_below_patch(src, height: int, width: int, patch: int) -> None:
    """DataError naming the image when a side of height x width pixels is shorter than `patch`."""
    if min(height, width) < patch:
        raise DataError(f"{_name(src)} ({height} x {width} pixels) is smaller than one {patch} x {patch} patch "
                        "(the smallest image this model reads)")


def note_resized(src, size: tuple[int, int], resized: tuple[int, int], budget: str) -> None:
    """Note (shown with --verbose) that an image of `size` (h, w), over `budget`, became `resized`."""
    log.info("%s (%d x %d pixels) is larger than %s: resized down to %d x %d", _name(src), *size, budget, *resized)


class _Stderr(logging.Handler):
    """One line per note on the current sys.stderr (looked up when written: tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"vlmkit: {self.format(record)}", file=sys.stderr, flush=True)


def show_notes(enabled: bool) -> None:
    """Print the processors' notes on stderr (`enabled`) or keep them quiet (the default)."""
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr())
        log.propagate = False  # the one line above is the whole of it
    log.setLevel(logging.INFO if enabled else logging.WARNING)
