"""Qwen2-VL processor: images at their own size as flattened patches, `<|image_pad|>` per merged token.

Image (transformers' Qwen2VLImageProcessorPil), for an image of h x w pixels, factor
F = patch_size * merge_size, and the pixel budget [min_pixels, max_pixels] (`size.shortest_edge`,
`size.longest_edge`) — `smart_resize`:

    h', w' = round(h / F) * F, round(w / F) * F             (Python's round: halves to even)
    if h' w' > max_pixels:  b = sqrt(h w / max_pixels); h', w' = max(F, floor(h / b / F) * F), ...
    elif h' w' < min_pixels: b = sqrt(min_pixels / (h w)); h', w' = ceil(h b / F) * F, ...
    RGB uint8 -> bicubic resize to (h', w') -> rescale -> normalise (CLIP's mean / std) -> [3, h', w']

then patchify: the h'/P x w'/P patches in spatial-merge order (the merge x merge blocks
row-major, patches inside a block row-major), each repeated over the temporal patch (a still
image is its own frame pair) and flattened as (C, Tp, P, P): pixel_values float32
[sum h'w'/P^2, C * Tp * P * P], image_grid_thw int64 [M, 3] = (1, h'/P, w'/P).

Text (Qwen2VLProcessor): each `<|image_pad|>` placeholder (the chat template wraps it in
`<|vision_start|>` / `<|vision_end|>`) becomes h'w' / (P^2 merge^2) `<|image_pad|>` tokens. A 40 x 56
image with 16-px patches and merge 2 becomes 32 x 64: 8 tokens.

Videos (`vlmkit.data.video.Video`, frames as PIL images or uint8 arrays; Qwen2VLVideoProcessor):
every frame is resized to smart_resize of the first frame's size within the video budget
(video_preprocessor_config.json `size`, else the image processor's) and normalised as an image;
the frames are padded with copies of the last one to a multiple of Tp, and each Tp consecutive
frames form one temporal patch: pixel_values_videos float32 [sum t h w, C*Tp*P*P] in
(temporal patch, spatial-merge order) order, video_grid_thw int64 [V, 3] = (F'/Tp, h'/P, w'/P),
and second_per_grid_ts float32 [V] = Tp / fps (Qwen2_5_VLProcessor's; fps 24 when the frames
carry none, transformers' default for frames without metadata). A video fills a `<|video_pad|>`
placeholder, or an `<|image_pad|>` one (what a chat template renders for an image part), with
t h w / merge^2 `<|video_pad|>` tokens. transformers resizes video frames with torchvision
(not installable here) where this module uses PIL, as for images; see tests/parity/test_qwen2_vl_video.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import pixels
from vlmkit.data.video import Video
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files
from vlmkit.errors import ConfigError, DataError

# Qwen2VLImageProcessorPil's class defaults, for fields a folder leaves out.
_IMAGE_DEFAULTS = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                       resample=3, patch_size=14, temporal_patch_size=2, merge_size=2,
                       size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h', w') multiples of `factor` with about the image's aspect ratio and h' w' within the budget."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise DataError(f"an image of {height} x {width} pixels has an aspect ratio over 200 (Qwen2-VL's limit)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify_frames(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """Frames [F, C, H, W] -> flattened patches [t H W / P^2, C * Tp * P * P], t = ceil(F / Tp):
    the last frame repeated up to a multiple of Tp, then per temporal patch in spatial-merge order."""
    if pad := -x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
    F, C, H, W = x.shape
    gt, gh, gw = F // temporal, H // patch, W // patch
    x = x.reshape(gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)  # [t, Tp, C, bh, m, P, bw, m, P]
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # [t, bh, bw, m, m, C, Tp, P, P]
    return x.reshape(gt * gh * gw, C * temporal * patch * patch)


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """An image [C, H, W] -> [H W / P^2, C * Tp * P * P]: one frame, so its own temporal patch."""
    return patchify_frames(x[None], patch, merge, temporal)


@dataclass(kw_only=True, frozen=True)
class Qwen2VLProcessorConfig:
    """Qwen2VLImageProcessor fields (preprocessor_config.json) and the processor's image token."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    do_resize: bool = True
    resample: int = 3
    norm: pixels.Normalization = pixels.Normalization()
    image_token: str = "<|image_pad|>"
    video_token: str = "<|video_pad|>"
    # Qwen2VLVideoProcessor's pixel budget per frame (its size.shortest_edge / longest_edge).
    video_min_pixels: int = 56 * 56
    video_max_pixels: int = 28 * 28 * 1280

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Qwen2VLProcessorConfig":
        image, proc = read_processor_files(folder)
        image = {**_IMAGE_DEFAULTS, **image}
        size = image.get("size") or {}
        lo = image.get("min_pixels") or size.get("shortest_edge")
        hi = image.get("max_pixels") or size.get("longest_edge")
        if not lo or not hi:
            raise ConfigError(f"{folder}: the Qwen2-VL image processor needs size.shortest_edge and "
                              f"size.longest_edge (min / max pixels), got {size}")
        video = _video_fields(folder, proc)
        vlo = video.get("min_pixels") or video.get("size", {}).get("shortest_edge") or lo
        vhi = video.get("max_pixels") or video.get("size", {}).get("longest_edge") or hi
        return cls(patch_size=int(image["patch_size"]), temporal_patch_size=int(image["temporal_patch_size"]),
                   merge_size=int(image["merge_size"]), min_pixels=int(lo), max_pixels=int(hi),
                   do_resize=bool(image.get("do_resize", True)), resample=int(image["resample"]),
                   norm=pixels.Normalization.from_dict(image), image_token=proc.get("image_token", "<|image_pad|>"),
                   video_token=proc.get("video_token", "<|video_pad|>"), video_min_pixels=int(vlo),
                   video_max_pixels=int(vhi))


def _video_fields(folder, proc: dict) -> dict:
    """The video processor's fields: processor_config.json "video_processor" (5.x), else
    video_preprocessor_config.json; none (published 4.x folders): the image processor's budget."""
    if isinstance(proc.get("video_processor"), dict):
        return proc["video_processor"]
    path = Path(folder) / "video_preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {str(exc).splitlines()[0][:120]}") from None


# transformers' VideoMetadata.sampled_fps for frames given without metadata.
DEFAULT_FPS = 24.0


class Qwen2VLProcessor(TypeCProcessor):
    """(prompts with `<|image_pad|>` / `<|video_pad|>` placeholders, images and `Video`s in
    placeholder order) -> pixel_values float32 [N, C*Tp*P*P] (flattened patches) and
    image_grid_thw int64 [M, 3]; for videos pixel_values_videos, video_grid_thw and
    second_per_grid_ts float32 [V]."""

    config_class = Qwen2VLProcessorConfig
    takes_videos = True  # `vlmkit generate --video` passes one Video, not its frames as images
    # A `<|video_pad|>` is a placeholder like `<|image_pad|>`: the input filling it says which it is.
    alias_fields = ("video_token",)

    @property
    def frame_multiple(self) -> int:
        """Frames of one temporal patch: video frame counts are rounded to a multiple (`video.frame_count`)."""
        return self.config.temporal_patch_size

    def image(self, src, min_pixels: int | None = None, max_pixels: int | None = None) -> torch.Tensor:
        """One image source -> normalised float32 [3, h', w'] (h', w' multiples of patch * merge),
        within [min_pixels, max_pixels] (default: the image budget)."""
        from vlmkit.data.processors.native import check_not_below_patch, note_resized

        cfg, image = self.config, pixels.load_rgb(src)
        height, width = image.shape[:2]
        factor = cfg.patch_size * cfg.merge_size
        if cfg.do_resize:
            budget = max_pixels or cfg.max_pixels
            height, width = smart_resize(height, width, factor, min_pixels or cfg.min_pixels, budget)
            if image.shape[0] * image.shape[1] > budget:
                note_resized(src, image.shape[:2], (height, width), f"max_pixels {budget}")
        elif height % factor or width % factor:
            raise DataError(f"an image of {height} x {width} pixels is not a multiple of {factor} and do_resize is off")
        check_not_below_patch(src, *image.shape[:2], cfg.patch_size)  # one line, not a pixel blown up to a patch
        return pixels.to_pixel_values(pixels.resize(image, height, width, cfg.resample), cfg.norm)

    def video(self, video: Video) -> torch.Tensor:
        """A Video -> normalised float32 frames [F, 3, h', w'], all at the first frame's target size."""
        cfg, size = self.config, None
        frames = []
        for frame in video.frames:
            rgb = pixels.load_rgb(frame)
            if size is not None and rgb.shape[:2] != size:
                raise DataError(f"a video's frames differ in size: {size[0]} x {size[1]} and "
                                f"{rgb.shape[0]} x {rgb.shape[1]} pixels")
            size = rgb.shape[:2]
            frames.append(self.image(rgb, cfg.video_min_pixels, cfg.video_max_pixels))
        return torch.stack(frames)

    def encode_images(self, groups):
        cfg = self.config
        out, expansions = {}, []
        items = [s for g in groups for s in g]
        for key, is_video in (("image", False), ("video", True)):
            chosen = [s for s in items if isinstance(s, Video) == is_video]
            if not chosen:
                continue
            frames = [self.video(s) if is_video else self.image(s)[None] for s in chosen]
            patches = [patchify_frames(f, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size) for f in frames]
            grids = [[-(-f.shape[0] // cfg.temporal_patch_size), f.shape[2] // cfg.patch_size,
                      f.shape[3] // cfg.patch_size] for f in frames]
            out[f"pixel_values{'_videos' if is_video else ''}"] = torch.cat(patches)
            out[f"{key}_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            if is_video:
                out["second_per_grid_ts"] = torch.tensor(
                    [cfg.temporal_patch_size / (v.fps or DEFAULT_FPS) for v in chosen], dtype=torch.float32)
        counts = {k: iter(out[f"{k}_grid_thw"].prod(-1).tolist()) for k in ("image", "video") if f"{k}_grid_thw" in out}
        for s in items:
            token, key = (cfg.video_token, "video") if isinstance(s, Video) else (self.placeholder, "image")
            expansions.append(token * (next(counts[key]) // cfg.merge_size**2))
        return out, expansions


def build_processor(folder: str | Path, tokenizer, cfg) -> Qwen2VLProcessor:
    """The Qwen2-VL processor builder: the folder's own processor files; its `<|image_pad|>` id must
    be the config's image_token_id and its patch / merge sizes the tower's."""
    processor = Qwen2VLProcessor.from_folder(folder).check_image_token(folder, cfg)
    c, v = processor.config, cfg.vision
    if (c.patch_size, c.merge_size, c.temporal_patch_size) != (v.patch_size, v.spatial_merge_size,
                                                               v.temporal_patch_size):
        raise ConfigError(f"{folder}: processor patch / merge / temporal sizes {c.patch_size} / {c.merge_size} / "
                          f"{c.temporal_patch_size} != the vision config's {v.patch_size} / {v.spatial_merge_size} / "
                          f"{v.temporal_patch_size}")
    return processor


# The tokens of Qwen2-VL's tokenizer its chat template writes (ChatML markers, the vision span).
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def processor_files(cfg, processor_class: str = "Qwen2VLProcessor") -> ProcessorFiles:
    """What a Qwen2-VL folder made by `vlmkit create` carries for Qwen2VLProcessor (and
    transformers'): its tokenizer's special tokens and the Qwen2-VL-Instruct chat template."""
    return ProcessorFiles(special_tokens=SPECIAL_TOKENS, processor_config={"processor_class": processor_class},
                          chat_template=bundled_chat_template("qwen2-vl"))


def processor_files_2_5(cfg) -> ProcessorFiles:
    """Qwen2.5-VL's: Qwen2-VL's files with Qwen2_5_VLProcessor (Qwen2.5-VL-Instruct ships Qwen2-VL's chat template)."""
    return processor_files(cfg, "Qwen2_5_VLProcessor")
