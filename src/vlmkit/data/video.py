"""Multi-frame input: sample frames from a folder, an animated GIF/WebP or a video file.

PaliGemma's video transfers (big_vision `msrvtt_cap`, `msvd_qa`, ...) feed a fixed number of
frames (16) taken at a fixed stride, each encoded like a still image.

Sampling rule (`sample_indices`): frames ``0, s, 2s, ...`` of the ``n`` available, at most
``max_frames`` of them. With ``stride=None`` we pick ``s = ceil(n / max_frames)``, the smallest
fixed stride whose frames span the whole clip without exceeding ``max_frames``; e.g. n=100,
max_frames=16 -> s=7 -> 15 frames 0..98; n=10 -> s=1 -> all 10 frames. We never repeat or
interpolate frames: a short clip gives fewer frames (pad/replicate downstream if a fixed count is
needed, as big_vision's `video_replicate_img` does).

Sources:
- a folder of images, ordered by natural sort of the file name ("f2.png" < "f10.png");
- any image Pillow opens; animated GIF / WebP / APNG give their frames, a still image gives one;
- a video file (.mp4, .mov, ...) via PyAV, else OpenCV, if one is installed; otherwise an
  ImageError says what to install. Both are optional: vlmkit does not depend on them.

How many frames (`frame_count`): a request of N frames (`generate --max-frames`, training's
`data.video_frames`) is rounded to a multiple of the model's temporal patch the way transformers'
Qwen2-VL video processor rounds `num_frames` (2 frames a patch: 3 -> 4, 5 -> 4; 1 -> 0 is an
error); the rule above then takes at most that many. Unlike transformers' `num_frames` the count is
a maximum: a clip with fewer frames gives all of them (the processor repeats the last frame of an
odd count, as transformers' does), where transformers refuses to sample it; and the frames are the
fixed-stride rule's, where transformers spreads exactly N with a fractional step (100 frames, N =
16: stride 7 gives 15 frames here, transformers frames 0, 6, 12, 18, 25, ...). A frame rate
(`data.video_fps`, `fps_frame_count`) asks for duration x rate frames instead, counted as
transformers counts `fps=`: at least 4, at most N and the clip, down to a multiple of the patch.

Models with a video input (Qwen2-VL, Qwen2.5-VL: temporal patches of 2 frames) take the frames
as one `Video` (`sample_video`: the frames and their sampled rate, the source's frames per second
divided by the stride: a 30 fps file sampled every 15th frame is 2 fps); the others take them as
separate images. Which one is the processor's to say (`takes_videos`), see `model_inputs`. The
source rate comes from the container (PyAV's average rate, OpenCV's CAP_PROP_FPS) or an animated
image's first frame duration; a folder of frames has none (None).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlmkit.errors import ConfigError, DataError, ImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"}
)
_DIGITS = re.compile(r"([0-9]+)")
MIN_FPS_FRAMES = 4  # transformers' Qwen2VLVideoProcessor.min_frames: the fewest frames a rate request takes
_INSTALL_HINT = "install PyAV (`pip install av`) or OpenCV (`pip install opencv-python-headless`)"


def sample_indices(num_frames: int, max_frames: int = 16, stride: int | None = None) -> list[int]:
    """Indices ``0, s, 2s, ...`` (< num_frames), at most `max_frames` of them; see module doc."""
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise ConfigError(f"max_frames must be an int >= 1, got {max_frames!r}")
    bad_stride = isinstance(stride, bool) or not isinstance(stride, int) or stride < 1
    if stride is not None and bad_stride:
        raise ConfigError(f"stride must be None or an int >= 1, got {stride!r}")
    if num_frames <= 0:
        return []
    step = stride if stride is not None else math.ceil(num_frames / max_frames)
    return list(range(0, num_frames, step))[:max_frames]


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: "f2" < "f10"; ties broken by raw name."""
    parts = _DIGITS.split(name)
    # (0, number) for digit runs, (1, text) otherwise: always comparable position by position.
    key = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts if p)
    return key + ((2, name),)


def _frame_rgb(im: Image.Image) -> Image.Image:
    rgb = im.convert("RGB")  # a copy, so later seeks of an animated file do not alter it
    rgb.load()
    return rgb


def _from_folder(folder: Path, max_frames: int, stride: int | None) -> list[Image.Image]:
    files = sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.name),
    )  # fmt: skip
    if not files:
        raise ImageError(f"no image frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    frames = []
    for i in sample_indices(len(files), max_frames, stride):
        with _open_image(files[i]) as im:
            frames.append(_frame_rgb(im))
    return frames


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot open frame {path}: {e}") from None


def _from_animated(path: Path, max_frames: int, stride: int | None) -> list[Image.Image]:
    with _open_image(path) as im:
        n = getattr(im, "n_frames", 1)
        frames = []
        try:
            for i in sample_indices(n, max_frames, stride):
                im.seek(i)
                frames.append(_frame_rgb(im))
        except (OSError, EOFError, ValueError) as e:
            raise ImageError(f"cannot decode frames of {path}: {e}") from None
    return frames


def _from_video_av(av, path: Path, max_frames: int, stride: int | None) -> list[Image.Image]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ImageError(f"{path} has no video stream")
        stream = container.streams.video[0]
        total = int(stream.frames or 0)
        if total <= 0:  # frame count missing from the container: decode everything once
            decoded = [f.to_image() for f in container.decode(stream)]
            chosen = sample_indices(len(decoded), max_frames, stride)
            return [decoded[i].convert("RGB") for i in chosen]
        wanted = sample_indices(total, max_frames, stride)
        picked, keep = [], set(wanted)
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                picked.append(frame.to_image().convert("RGB"))
            if i >= wanted[-1]:
                break
        return picked


def _from_video_cv2(cv2, path: Path, max_frames: int, stride: int | None) -> list[Image.Image]:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ImageError(f"OpenCV cannot open video {path}")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        keep = set(sample_indices(total, max_frames, stride))
        frames = []
        for i in range(total):
            if not cap.grab():  # cheaper than read() for frames we skip
                break
            if i in keep:
                ok, bgr = cap.retrieve()
                if ok:
                    frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        return frames
    finally:
        cap.release()


def _from_video(path: Path, max_frames: int, stride: int | None) -> list[Image.Image]:
    sample_indices(1, max_frames, stride)  # validate arguments before touching the file
    try:
        import av
    except ImportError:
        av = None
    try:
        if av is not None:
            return _from_video_av(av, path, max_frames, stride)
        try:
            import cv2
        except ImportError:
            raise ImageError(f"cannot read video {path}: {_INSTALL_HINT}") from None
        return _from_video_cv2(cv2, path, max_frames, stride)
    except ImageError:
        raise
    except Exception as e:  # decoder libraries raise their own error types for corrupt files
        raise ImageError(f"cannot decode video {path}: {type(e).__name__}: {e}") from None


def sample_frames(
    source: str | os.PathLike | Sequence[Image.Image],
    max_frames: int = 16,
    stride: int | None = None,
) -> list[Image.Image]:
    """Return up to `max_frames` RGB frames of `source`, taken every `stride` frames.

    source: a folder of frames, an (animated) image file, a video file, or a list of PIL images.
    stride: None picks ``ceil(n / max_frames)`` so the frames span the clip (see module doc).
    Raises ImageError (missing/unreadable source, no frames, no video backend) or ConfigError
    (bad `max_frames` / `stride`).
    """
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return [_frame_rgb(source[i]) for i in sample_indices(len(source), max_frames, stride)]
    path = Path(source)
    if path.is_dir():
        frames = _from_folder(path, max_frames, stride)
    elif not path.exists():
        raise ImageError(f"video source not found: {path}")
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        frames = _from_video(path, max_frames, stride)
    else:
        frames = _from_animated(path, max_frames, stride)
    if not frames:
        raise ImageError(f"no frames could be read from {path}")
    return frames


@dataclass(frozen=True)
class Video:
    """The frames of one clip as one model input (PIL images or uint8 arrays [H, W, 3], in time
    order) and their rate in frames per second (None: unknown; the processor then assumes its default)."""

    frames: tuple
    fps: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "frames", tuple(self.frames))
        if not self.frames:
            raise DataError("a video with zero frames")
        if self.fps is not None and not self.fps > 0:
            raise DataError(f"a video's fps must be > 0, got {self.fps}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first frame, like `PIL.Image.size`."""
        first = self.frames[0]
        return first.size if isinstance(first, Image.Image) else (first.shape[1], first.shape[0])


def _source_rate(path: Path) -> tuple[float | None, int]:
    """(frames per second or None, frame count) of a video or animated image, from its metadata."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        with _open_image(path) as im:
            ms = im.info.get("duration") or 0
            return (1000.0 / ms if ms > 0 else None), getattr(im, "n_frames", 1)
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return (float(rate) if rate else None), int(stream.frames or 0)
    import cv2  # sample_frames has read the file with one of the two

    cap = cv2.VideoCapture(str(path))
    try:
        return (cap.get(cv2.CAP_PROP_FPS) or None), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def _rate_of(path: Path) -> tuple[float | None, int]:
    """`_source_rate` of a source (a folder: none), its failures as one ImageError line."""
    if path.is_dir():
        return None, 0
    if not path.exists():
        raise ImageError(f"video source not found: {path}")
    try:
        return _source_rate(path)
    except ImportError:
        raise ImageError(f"cannot read video {path}: {_INSTALL_HINT}") from None
    except Exception as e:  # decoder libraries raise their own error types for corrupt files
        raise ImageError(f"cannot read the frame rate of {path}: {type(e).__name__}: {e}") from None


def fps_frame_count(total: int, rate: float | None, fps: float, most: int, multiple: int = 1) -> int:
    """Frames to take from a clip of `total` frames at `rate` per second when `fps` frames a second are
    asked, as transformers' `Qwen2VLVideoProcessor.sample_frames(fps=...)` counts them: total / rate *
    fps, at least MIN_FPS_FRAMES, at most `most` and the clip, then down to a multiple of the temporal
    patch. A clip shorter than one patch gives all its frames (transformers divides by zero there);
    a container that does not say its frame count gives at most `most`.

    Raises:
        ImageError: the source has no frame rate (a folder of frames, or a file that gives none).
    """
    if rate is None:
        raise ImageError("it has no frame rate (a folder of frames, or a file that gives none)")
    if total <= 0:
        return most
    cap = math.floor(min(most, total) / multiple) * multiple
    count = min(max(total / rate * fps, MIN_FPS_FRAMES), cap, total)
    return math.floor(count / multiple) * multiple or total


def sample_video(source: str | os.PathLike, max_frames: int = 16, stride: int | None = None, *,
                 fps: float | None = None, multiple: int = 1) -> Video:
    """`sample_frames` of `source` as one Video whose fps is the sampled rate: the source's rate over
    the stride used (None for a folder of frames, or when the container gives no rate). With `fps`,
    at most `fps_frame_count` frames (`max_frames` the cap, `multiple` the temporal patch)."""
    path = Path(source)
    if fps is not None:
        if stride is not None:
            raise ConfigError("a frame rate and a frame stride are two ways to choose frames; give one of them")
        try:
            rate, total = _rate_of(path)
            max_frames = fps_frame_count(total, rate, fps, max_frames, multiple)
        except ImageError as e:
            raise ImageError(f"cannot sample {path} at {fps} fps: {e}") from None
    frames = sample_frames(source, max_frames, stride)
    sampled = None  # the rate of the frames taken
    if not path.is_dir():
        rate, n = _source_rate(path)
        step = stride if stride is not None else math.ceil(max(n, len(frames)) / max_frames)
        sampled = rate / step if rate else None
    return Video(frames, fps=sampled)


@dataclass(frozen=True)
class FrameRule:
    """How a video source is sampled for one model (module doc): at most `most` frames (a multiple of
    the temporal patch `multiple`), or, with `fps`, that many frames a second within `most`."""

    most: int = 16
    fps: float | None = None
    multiple: int = 1

    @classmethod
    def of(cls, requested: int, processor=None, fps: float | None = None, name: str = "max_frames") -> FrameRule:
        """The rule of a request of `requested` frames (`frame_count`) and an optional rate for `processor`."""
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
            raise ConfigError(f"the frame rate asked for must be a number > 0, got {fps!r}")
        return cls(frame_count(requested, processor, name), fps, getattr(processor, "frame_multiple", 1))

    def sample(self, source: str | os.PathLike, stride: int | None = None) -> Video:
        return sample_video(source, self.most, stride, fps=self.fps, multiple=self.multiple)


def frame_count(requested: int, processor=None, name: str = "max_frames") -> int:
    """Most frames to sample from a video source for `processor`: `requested` rounded to a multiple of
    the processor's temporal patch (`frame_multiple`; 1 without one) as transformers'
    `Qwen2VLVideoProcessor.sample_frames` rounds `num_frames`: ``round(requested / m) * m``, with
    Python's round (halves to even), so for m = 2: 3 -> 4, 5 -> 4, 7 -> 8, 9 -> 8, 16 -> 16.

    Raises:
        ConfigError: `requested` is not an int >= 1, or it rounds to 0 frames (1 with m = 2,
            where transformers would divide by zero); the message names `name`.
    """
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {requested!r}")
    multiple = getattr(processor, "frame_multiple", 1)
    count = round(requested / multiple) * multiple
    if count < 1:
        raise ConfigError(f"{name}={requested} rounds to 0 frames for temporal patches of {multiple} frames "
                          f"(as transformers rounds num_frames); ask for at least {multiple}")
    return count


def model_inputs(processor, video: Video) -> list:
    """A sampled video as a model's processor takes it: the `Video` when the processor has video
    inputs (`takes_videos`), else its frames, one image each."""
    if getattr(processor, "takes_videos", False):
        return [video]
    return list(video.frames)
