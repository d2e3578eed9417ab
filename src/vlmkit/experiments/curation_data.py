"""Data of the curation experiment: a corrupted copy of the synthetic world, with its ground truth.

The clean world is the objectives experiment's synthetic source (`objectives_data.synth_source`:
32 px scenes of 1-2 shapes, captioned "a red circle and a blue square", five colour-shape pairs
held out of training for zero-shot). Its training pairs are split into a small CLEAN bootstrap
split (for the score model) and the raw pool, which is corrupted (`corrupt`), per row, by seed:

    swapped     30%  the caption of another scene (a different caption)
    near_dup    20%  a copy of an EARLIER clean row's image (resized, JPEG-recompressed or shifted
                     by a few pixels) with that row's caption; always later in input order, so a
                     "first occurrence kept" dedup should remove the copy, not the original
    printed     10%  the row's own caption printed over its image (text merely printed in the image)
    blank       10%  a uniform image (a random colour), caption kept
    clean       30%  unchanged

Images are stored at `STORE_SIZE` (64 px, the 32 px scene upscaled 2x with nearest neighbours) so
the printed captions are legible to OCR; training and evaluation reduce them back to 32 px with a
box filter, which gives the original scene exactly (`to_pairs`). `write_manifest` writes the rows
as a JSONL manifest (``{"image", "suffix", "id"}``) that `vlmkit data curate` reads, and the
ground truth (kind and source row of every row) beside it as truth.json.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vlmkit.experiments.objectives_data import IMAGE_SIZE
from vlmkit.outputs import atomic_write_bytes
from vlmkit.training.recipes.contrastive import ImageTextPairs

KINDS = ("swapped", "near_dup", "printed", "blank", "clean")
FRACTIONS = {"swapped": 0.3, "near_dup": 0.2, "printed": 0.1, "blank": 0.1}  # the rest is clean
DUP_TRANSFORMS = ("resized", "jpeg", "shifted")
STORE_SIZE = 64


@dataclass(kw_only=True)
class Corrupted:
    """The raw pool after corruption: PIL images (stored form), captions, and per row its kind,
    the row it copies or takes a caption from (-1: none) and, for near-duplicates, the transform."""

    images: list[Image.Image]
    texts: list[str]
    kinds: list[str]
    sources: list[int]
    transforms: list[str]

    def truth(self) -> dict:
        return {"kinds": self.kinds, "sources": self.sources, "transforms": self.transforms,
                "fractions": FRACTIONS}


def assign_kinds(n: int, rng: np.random.Generator) -> list[str]:
    """Exactly round(f * n) rows of each corruption, at random places; row 0 is always clean so
    that every near-duplicate has an earlier clean row to copy."""
    counts = {k: int(round(f * n)) for k, f in FRACTIONS.items()}
    kinds = [k for k, c in counts.items() for _ in range(c)]
    kinds += ["clean"] * (n - len(kinds))
    order = [kinds[i] for i in rng.permutation(n)]
    first_clean = order.index("clean")
    return order[first_clean:] + order[:first_clean]  # rotate: same counts, clean first


def upscale(image_chw: torch.Tensor) -> Image.Image:
    """uint8 [3, S, S] scene -> PIL at STORE_SIZE (nearest: each pixel becomes a block)."""
    image = Image.fromarray(image_chw.permute(1, 2, 0).numpy())
    return image.resize((STORE_SIZE, STORE_SIZE), Image.NEAREST)


def near_duplicate(image: Image.Image, transform: str, rng: np.random.Generator) -> Image.Image:
    """A slightly altered copy: smaller size, JPEG artefacts, or shifted 2-4 px (edges repeated)."""
    if transform == "resized":
        side = int(rng.integers(40, 57))
        return image.resize((side, side), Image.BILINEAR)
    if transform == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(20, 61)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    dx, dy = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(2, 5, size=2))
    a = np.asarray(image)
    padded = np.pad(a, ((4, 4), (4, 4), (0, 0)), mode="edge")  # [S+8, S+8, 3]
    return Image.fromarray(padded[4 - dy:4 - dy + a.shape[0], 4 - dx:4 - dx + a.shape[1]].copy())


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    return lines + [cur]


def print_caption(image: Image.Image, text: str) -> Image.Image:
    """`text` printed in dark letters on a light band over the image (8 px font at 64 px)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=8)  # Pillow's bundled font: identical on every machine
    lines = _wrap(text, draw, font, STORE_SIZE - 6)
    top = 4
    draw.rectangle([0, top - 2, STORE_SIZE, top + 11 * len(lines)], fill=(240, 240, 235))
    for k, line in enumerate(lines):
        draw.text((3, top + 11 * k), line, fill=(15, 15, 15), font=font)
    return out


def _swap_donor(i: int, texts: list[str], rng: np.random.Generator) -> int:
    while True:  # a different caption exists: the pool holds many distinct scenes
        j = int(rng.integers(len(texts)))
        if j != i and texts[j] != texts[i]:
            return j


def corrupt(pool: ImageTextPairs, seed: int) -> Corrupted:
    """Corrupt the clean `pool` per the module docstring; the same (pool, seed) gives the same rows."""
    rng = np.random.default_rng([seed, 19])
    n = len(pool)
    kinds = assign_kinds(n, rng)
    clean_before = np.cumsum([k == "clean" for k in kinds])  # clean rows in [0, i]
    clean_idx = [i for i, k in enumerate(kinds) if k == "clean"]
    images, texts, sources, transforms = [], [], [], []
    for i, kind in enumerate(kinds):
        image, text, src, tf = upscale(pool.images[i]), pool.texts[i], -1, ""
        if kind == "swapped":
            src = _swap_donor(i, pool.texts, rng)
            text = pool.texts[src]
        elif kind == "near_dup":
            src = clean_idx[int(rng.integers(clean_before[i]))]  # an earlier clean row
            tf = DUP_TRANSFORMS[int(rng.integers(len(DUP_TRANSFORMS)))]
            image, text = near_duplicate(upscale(pool.images[src]), tf, rng), pool.texts[src]
        elif kind == "printed":
            image = print_caption(image, text)
        elif kind == "blank":
            image = Image.new("RGB", image.size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        images.append(image)
        texts.append(text)
        sources.append(src)
        transforms.append(tf)
    return Corrupted(images=images, texts=texts, kinds=kinds, sources=sources, transforms=transforms)


def _encoded(image: Image.Image, jpeg: bool) -> bytes:
    buf = io.BytesIO()
    if jpeg:
        image.save(buf, format="JPEG", quality=95)  # already JPEG-degraded; stored as a JPEG file
    else:
        image.save(buf, format="PNG", compress_level=6)  # PIL writes no timestamp: reproducible
    return buf.getvalue()


def write_manifest(data: Corrupted, folder: Path) -> Path:
    """images/NNNNNN.{png,jpg}, manifest.jsonl (image, suffix, id) and truth.json in `folder`."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, text, tf) in enumerate(zip(data.images, data.texts, data.transforms)):
        name = f"images/{i:06d}.{'jpg' if tf == 'jpeg' else 'png'}"
        atomic_write_bytes(folder / name, _encoded(image, tf == "jpeg"))
        lines.append(json.dumps({"image": name, "suffix": text, "id": i}))
    atomic_write_bytes(folder / "truth.json", json.dumps(data.truth()).encode())
    atomic_write_bytes(folder / "manifest.jsonl", ("\n".join(lines) + "\n").encode())
    return folder / "manifest.jsonl"


def to_pairs(images: list[Image.Image], texts: list[str]) -> ImageTextPairs:
    """Stored images (any size) -> training pairs at 32 px (box filter: an upscaled scene comes
    back exactly)."""
    arrays = [np.asarray(im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)) for im in images]
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # [N, 3, S, S] uint8
    return ImageTextPairs(tensor, list(texts))


def read_manifest(path: Path) -> tuple[list[int], ImageTextPairs]:
    """(row ids, 32 px pairs) of a manifest written by `write_manifest` or by curate (absolute paths)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    images = []
    for r in rows:
        with Image.open(path.parent / r["image"]) as im:
            images.append(im.convert("RGB"))
    return [r["id"] for r in rows], to_pairs(images, [r["suffix"] for r in rows])
