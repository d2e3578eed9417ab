"""Seeded synthetic scenes (coloured shapes + rendered words) and PaliGemma-format examples.

The world is small enough for a few-M-parameter PaliGemma trained on CPU to master, yet every
PaLI task is real: the answer must be read off the pixels.

- A light, lightly textured background; 1-4 flat shapes (circle, square, triangle, star, diamond)
  in clearly distinct colours; each (colour, shape) pair at most once per scene, so "the red
  circle" always names exactly one object. Shapes never overlap, so boxes are exact.
- With probability `word_prob` a scene also holds one upper-case word (fewer shapes then).
- Tasks (prefix -> suffix, exactly PaliGemma's prompt syntax, no trailing newline):
  ``caption en`` -> "a red circle and a blue square" (objects left to right);
  ``answer en what color is the circle?`` -> "red" (also shape, count, position, yes/no);
  ``detect circle`` / ``detect red circle`` / ``detect circle ; square`` ->
  ``<locY1><locX1><locY2><locX2> circle ; ...``;  ``ocr`` -> "CAT".

Boxes are pixel ``(x1, y1, x2, y2)`` with x2/y2 exclusive, i.e. continuous edge coordinates:
a shape whose pixels span columns 3..9 has x1=3, x2=10. They are measured from the rendered mask.

Not supported: overlapping or rotated shapes, segmentation targets, multilingual prompts.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmkit.errors import ConfigError
from vlmkit.tasks.parsing import coord_to_loc

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 230),
    "yellow": (240, 200, 0), "purple": (140, 50, 190), "orange": (245, 125, 0),
}  # fmt: skip
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
# Short, common English words; upper case because capitals stay legible at ~10 px cap height.
WORDS: tuple[str, ...] = tuple(
    "CAT DOG SUN MAP CUP BOX HAT PEN BUS CAR KEY BED EGG FOX OWL BEE ANT COW PIG HEN BAG JAM "
    "TEA ICE SKY SEA DAY BOY ART RUN SIT FLY TOP OAK ZOO WEB TOY NET BOOK TREE FISH BIRD MILK "
    "CAKE DOOR LAMP RAIN SNOW WIND STAR MOON SHIP BOAT FROG LION BEAR DUCK GOAT WOLF DEER ROSE "
    "LEAF SEED ROAD HILL LAKE GOLD SALT RICE SOUP BELL DRUM KITE RING COIN HAND FOOT FACE HOME "
    "CITY PARK GAME PLAY JUMP SING READ WALK".split()
)
TASKS: tuple[str, ...] = ("caption", "vqa", "detect", "ocr")


@dataclass(kw_only=True)
class SynthConfig:
    """Everything that defines a synthetic dataset; `seed` picks the split (train vs held-out)."""

    image_size: int = 64
    min_shapes: int = 1
    max_shapes: int = 4
    word_prob: float = 0.3  # chance that a scene also shows a word (the only source of OCR)
    max_shapes_with_word: int = 2  # a word takes ~70% of a 64 px row, leave room for shapes
    shape_size: tuple[float, float] = (0.2, 0.32)  # shape side as a fraction of image_size
    font_size: float = 0.22  # font size as a fraction of image_size (~10 px capitals at 64 px)
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    words: tuple[str, ...] = WORDS
    background: tuple[int, int] = (175, 240)  # range of the grey background level
    noise: float = 5.0  # std of the per-pixel background texture
    color_jitter: int = 12  # +- per channel, so colours are categories, not single RGB values
    position_margin: float = 0.05  # skip "where is" when a centre is this close to a 1/3 line
    examples_per_scene: int = 4
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"caption": 1.0, "vqa": 2.0, "detect": 2.0, "ocr": 1.0}
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.seed < 0:
            raise ConfigError(f"need image_size >= 32, seed >= 0: {self.image_size}, {self.seed}")
        if not 0 <= self.min_shapes <= self.max_shapes <= len(self.colors) * len(self.shapes):
            raise ConfigError(f"bad shape counts min={self.min_shapes} max={self.max_shapes}")
        bad = [c for c in self.colors if c not in COLORS]
        bad += [s for s in self.shapes if s not in SHAPES]
        if bad:
            raise ConfigError(f"unknown colours/shapes {bad}; known: {list(COLORS)}, {SHAPES}")
        if not self.words or any(not w.isalpha() for w in self.words):
            raise ConfigError("words must be a non-empty list of alphabetic words")
        weights = self.task_weights
        if set(weights) - set(TASKS) or not any(w > 0 for w in weights.values()):
            raise ConfigError(f"task_weights need positive weights for tasks in {TASKS}")
        if not 0 < self.shape_size[0] <= self.shape_size[1] < 0.5:
            raise ConfigError(f"shape_size must satisfy 0 < lo <= hi < 0.5, got {self.shape_size}")


@dataclass(kw_only=True)
class SceneObject:
    """One shape. `box` is pixel (x1, y1, x2, y2), x2/y2 exclusive; `rgb` is its exact fill."""

    shape: str
    color: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(kw_only=True)
class SceneWord:
    """A rendered word: `box` bounds its (anti-aliased) ink, same convention as shapes."""

    text: str
    rgb: tuple[int, int, int]
    box: tuple[int, int, int, int]


@dataclass(kw_only=True)
class Scene:
    """A rendered scene: RGB `image` (size x size), its shapes, optional word, example seed."""

    image: Image.Image
    objects: list[SceneObject]
    word: SceneWord | None
    seed: int  # seeds `make_examples` when no rng is given, so a scene alone is reproducible


@dataclass(kw_only=True)
class Example:
    """One PaLI example. `boxes` (detect only) pairs each label with its pixel box."""

    prefix: str
    suffix: str
    task: str
    subtask: str = ""
    boxes: list[tuple[str, tuple[int, int, int, int]]] | None = None


@lru_cache(maxsize=8)
def _font(size_px: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font (>= 10.1) is identical on every machine, unlike system fonts, which
    # keeps rendered datasets byte-reproducible across hosts.
    return ImageFont.load_default(size=size_px)


def _shape_mask(shape: str, x: int, y: int, s: int, size: int) -> np.ndarray:
    """Binary (size, size) bool mask of `shape` drawn inside the square (x, y, s), no AA."""
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    r, cx, cy = (s - 1) / 2, x + (s - 1) / 2, y + (s - 1) / 2
    if shape == "circle":
        d.ellipse((x, y, x + s - 1, y + s - 1), fill=255)
    elif shape == "square":
        m = round(s * 0.08)  # a touch smaller so squares do not look larger than circles
        d.rectangle((x + m, y + m, x + s - 1 - m, y + s - 1 - m), fill=255)
    elif shape == "triangle":
        d.polygon([(cx, y), (x + s - 1, y + s - 1), (x, y + s - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(cx, y), (x + s - 1, cy), (cx, y + s - 1), (x, cy)], fill=255)
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5  # 5 outer + 5 inner vertices, point up
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        d.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(rad, ang)], fill=255)
    return np.asarray(mask) > 0


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _place(rng: np.random.Generator, w: int, h: int, size: int, taken: list) -> tuple | None:
    """Top-left (x, y) for a w x h rect that keeps a 2 px gap from `taken`, or None."""
    for _ in range(50):
        x, y = int(rng.integers(1, size - w)), int(rng.integers(1, size - h))
        if all(x + w + 2 <= a or a2 + 2 <= x or y + h + 2 <= b or b2 + 2 <= y
               for a, b, a2, b2 in taken):  # fmt: skip
            return x, y
    return None


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _draw_word(canvas: np.ndarray, rng, cfg: SynthConfig, taken: list) -> SceneWord | None:
    """Render a random word into `canvas` (H, W, 3) uint8 in place; None if it does not fit."""
    size, text = cfg.image_size, str(rng.choice(cfg.words)).upper()
    font = _font(max(8, round(cfg.font_size * size)))
    left, top, right, bottom = font.getbbox(text)
    pos = _place(rng, right - left, bottom - top, size, taken)
    if pos is None:
        return None
    layer = Image.new("L", (size, size), 0)
    # Shift by the glyph bbox offset so the ink starts at `pos`.
    ImageDraw.Draw(layer).text((pos[0] - left, pos[1] - top), text, font=font, fill=255)
    alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255.0  # (H, W, 1)
    rgb = _jitter((30, 30, 30), rng, cfg.color_jitter)
    blended = canvas * (1.0 - alpha) + np.array(rgb, np.float32) * alpha
    canvas[...] = np.round(blended).astype(np.uint8)
    box = _mask_box(alpha[..., 0] > 0)
    taken.append(box)
    return SceneWord(text=text, rgb=rgb, box=box)


def generate_scene(rng: np.random.Generator, cfg: SynthConfig) -> Scene:
    """Draw one scene from `rng`. Same rng state and cfg -> identical pixels and objects."""
    size = cfg.image_size
    level = rng.integers(cfg.background[0], cfg.background[1] + 1)
    tint = rng.integers(-6, 7, size=3)  # slight colour cast so the background is not always grey
    noise = rng.normal(0.0, cfg.noise, size=(size, size, 3))
    canvas = np.clip(np.round(level + tint + noise), 0, 255).astype(np.uint8)  # (H, W, 3)
    taken: list[tuple[int, int, int, int]] = []
    word = _draw_word(canvas, rng, cfg, taken) if rng.random() < cfg.word_prob else None
    hi = min(cfg.max_shapes, cfg.max_shapes_with_word) if word else cfg.max_shapes
    n = int(rng.integers(min(cfg.min_shapes, hi), hi + 1))
    pairs = [(c, s) for c in cfg.colors for s in cfg.shapes]
    objects = []
    for k in rng.permutation(len(pairs))[:n]:
        color, shape = pairs[k]
        s = int(round(rng.uniform(*cfg.shape_size) * size))
        pos = _place(rng, s, s, size, taken)
        if pos is None:  # crowded: keep the scene with fewer shapes rather than overlap
            continue
        mask = _shape_mask(shape, pos[0], pos[1], s, size)
        rgb = _jitter(COLORS[color], rng, cfg.color_jitter)
        canvas[mask] = rgb
        box = _mask_box(mask)
        taken.append((pos[0], pos[1], pos[0] + s, pos[1] + s))
        objects.append(SceneObject(shape=shape, color=color, rgb=rgb, box=box))
    seed = int(rng.integers(0, 2**63 - 1))
    return Scene(image=Image.fromarray(canvas, "RGB"), objects=objects, word=word, seed=seed)


def _loc_tokens(box: tuple[int, int, int, int], size: tuple[int, int]) -> str:
    """Four PaliGemma location tokens for a pixel box (x1, y1, x2, y2 exclusive) in an image (w, h).

    Uses the project's single loc convention (`vlmkit.tasks.parsing`): 1024 bins over each side,
    a coordinate goes to the bin containing it, decoded as the bin start k / 1024 * size, order
    y1 x1 y2 x2. On our images (side a divisor of 1024) pixel edges round-trip exactly.
    """
    x1, y1, x2, y2 = box
    w, h = size
    return "".join(f"<loc{v:04d}>" for v in (coord_to_loc(y1, h), coord_to_loc(x1, w),
                                                coord_to_loc(y2, h), coord_to_loc(x2, w)))


def position_name(box: tuple[int, int, int, int], size: int, margin: float = 0.0) -> str | None:
    """3x3-grid name of the box centre ("top left", "top", "center", ...), None if ambiguous.

    Ambiguous = the centre lies within `margin` (fraction of `size`) of a 1/3 or 2/3 line.
    """
    fx, fy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
    if any(abs(f - t) < margin for f in (fx, fy) for t in (1 / 3, 2 / 3)):
        return None
    col = "left" if fx < 1 / 3 else "right" if fx > 2 / 3 else ""
    row = "top" if fy < 1 / 3 else "bottom" if fy > 2 / 3 else ""
    return " ".join(p for p in (row, col) if p) or "center"


def _caption(scene: Scene) -> str:
    objs = sorted(scene.objects, key=lambda o: (o.box[0] + o.box[2], o.box[1]))
    parts = [f"a {o.name}" for o in objs]
    if scene.word:
        parts.append(f'the word "{scene.word.text}"')
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _vqa(scene: Scene, cfg: SynthConfig) -> dict[str, list[tuple[str, str]]]:
    """Candidate (question, answer) pairs per question kind."""
    objs = scene.objects
    n_shape, n_color = Counter(o.shape for o in objs), Counter(o.color for o in objs)
    pos = [(o, position_name(o.box, cfg.image_size, cfg.position_margin)) for o in objs]
    shapes, colors = _some(cfg.shapes, n_shape, scene), _some(cfg.colors, n_color, scene)
    return {
        "color": [(f"what color is the {o.shape}?", o.color) for o in objs
                  if n_shape[o.shape] == 1],
        "shape": [(f"what shape is the {o.color} object?", o.shape) for o in objs
                  if n_color[o.color] == 1],
        "count": [("how many shapes are there?", str(len(objs)))]
        + [(f"how many {s}s are there?", str(n_shape[s])) for s in shapes]
        + [(f"how many {c} shapes are there?", str(n_color[c])) for c in colors],
        "position": [(f"where is the {o.name}?", p) for o, p in pos if p is not None],
        "exist": [(f"is there a {o.name}?", "yes") for o in objs] + _near_misses(objs, cfg),
    }  # fmt: skip


def _some(names: tuple[str, ...], counts: Counter, scene: Scene) -> list[str]:
    """The present names plus one absent one (picked by the scene seed), so "0" is one answer
    among several rather than the majority it would be if every absent name were asked about."""
    absent = [n for n in names if not counts[n]]
    extra = [absent[scene.seed % len(absent)]] if absent else []
    return [n for n in names if counts[n]] + extra


def _near_misses(objs: list[SceneObject], cfg: SynthConfig) -> list[tuple[str, str]]:
    """One absent (colour, shape) per present object, same colour or same shape in turn.

    Asking about every absent pair would make "no" ~85% of the answers; near misses keep yes/no
    balanced and force the model to bind colour to shape.
    """
    present, out = {(o.color, o.shape) for o in objs}, []
    for i, o in enumerate(objs):
        cands = ([(o.color, s) for s in cfg.shapes] if i % 2 == 0 else
                 [(c, o.shape) for c in cfg.colors])  # fmt: skip
        miss = next((p for p in cands if p not in present and p not in out), None)
        out += [miss] if miss else []
    return [(f"is there a {c} {s}?", "no") for c, s in out]


def _detect(scene: Scene, cfg: SynthConfig) -> dict[str, list[Example]]:
    """Candidate detection examples per kind; boxes are grouped by query, raster order inside."""
    size = (cfg.image_size, cfg.image_size)
    raster = sorted(scene.objects, key=lambda o: (o.box[1], o.box[0]))

    def make(kind: str, queries: list[str], match) -> Example:
        hits = [(q, o.box) for q in queries for o in raster if match(q, o)]
        suffix = " ; ".join(f"{_loc_tokens(b, size)} {q}" for q, b in hits)
        return Example(prefix="detect " + " ; ".join(queries), suffix=suffix, task="detect",
                       subtask=kind, boxes=hits)  # fmt: skip

    shapes = sorted({o.shape for o in raster}, key=cfg.shapes.index)
    pairs = [(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1 :]]
    return {
        "shape": [make("shape", [s], lambda q, o: o.shape == q) for s in shapes],
        "color_shape": [make("color_shape", [o.name], lambda q, o: o.name == q) for o in raster],
        "multi": [make("multi", list(p), lambda q, o: o.shape == q) for p in pairs],
    }


def all_examples(scene: Scene, cfg: SynthConfig) -> dict[str, dict[str, list[Example]]]:
    """Every candidate example of `scene`, as {task: {subtask: [Example, ...]}} (for eval)."""

    def one(task: str, prefix: str, suffix: str, subtask: str | None = None) -> Example:
        return Example(prefix=prefix, suffix=suffix, task=task, subtask=subtask or task)

    out = {"vqa": {kind: [one("vqa", f"answer en {q}", a, kind) for q, a in qa]
                   for kind, qa in _vqa(scene, cfg).items() if qa}}  # fmt: skip
    if scene.objects or scene.word:
        out["caption"] = {"caption": [one("caption", "caption en", _caption(scene))]}
    if scene.objects:
        out["detect"] = {k: v for k, v in _detect(scene, cfg).items() if v}
    if scene.word:
        out["ocr"] = {"ocr": [one("ocr", "ocr", scene.word.text)]}
    return out


def make_examples(
    scene: Scene, cfg: SynthConfig, rng: np.random.Generator | None = None
) -> list[Example]:
    """Sample `cfg.examples_per_scene` distinct examples: task by `cfg.task_weights` (among the
    tasks this scene supports), then a subtask uniformly, then a candidate uniformly.

    Two-level sampling keeps e.g. the many "how many X" questions from swamping VQA. Without
    `rng`, the scene's own seed is used, so the result depends only on (scene, cfg).
    """
    rng = rng if rng is not None else np.random.default_rng(scene.seed)
    pool = all_examples(scene, cfg)
    chosen: list[Example] = []
    seen: set[str] = set()
    for _ in range(cfg.examples_per_scene * 4):  # retries absorb duplicate draws
        tasks = [t for t in TASKS if pool.get(t) and cfg.task_weights.get(t, 0) > 0]
        if len(chosen) == cfg.examples_per_scene or not tasks:
            break
        w = np.array([cfg.task_weights[t] for t in tasks], dtype=np.float64)
        sub = pool[tasks[int(rng.choice(len(tasks), p=w / w.sum()))]]
        cands = sub[list(sub)[int(rng.integers(len(sub)))]]
        ex = cands[int(rng.integers(len(cands)))]
        if ex.prefix not in seen:
            seen.add(ex.prefix)
            chosen.append(ex)
    return chosen


def example_row(ex: Example, scene_index: int, image_size: int) -> dict:
    """Manifest row for one example (without "image"); detect rows also carry pixel `boxes`
    (x1, y1, x2, y2, x2/y2 exclusive), their `labels` and `image_size` [w, h] for mAP."""
    row = {"prefix": ex.prefix, "suffix": ex.suffix, "task": ex.task, "subtask": ex.subtask,
           "scene": scene_index}  # fmt: skip
    if ex.boxes is not None:
        row |= {"boxes": [list(b) for _, b in ex.boxes], "labels": [q for q, _ in ex.boxes],
                "image_size": [image_size, image_size]}  # fmt: skip
    return row


def iter_scenes(n_scenes: int, cfg: SynthConfig, start: int = 0):
    """Yield (index, scene, examples). Scene i depends only on (cfg.seed, i), so any slice of a
    dataset can be regenerated alone and different seeds give unrelated splits."""
    for i in range(start, start + n_scenes):
        scene = generate_scene(np.random.default_rng([cfg.seed, i]), cfg)
        yield i, scene, make_examples(scene, cfg)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)  # PIL writes no timestamp: reproducible
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: byte-reproducible
    tar.addfile(info, io.BytesIO(data))


def write_dataset(
    out_dir: str | Path, n_scenes: int, cfg: SynthConfig, *, shards: bool = False,
    shard_size: int = 1000,
) -> Path:  # fmt: skip
    """Render `n_scenes` scenes and write them; byte-identical output for the same cfg.

    Layout: ``images/NNNNNN.png`` + ``manifest.jsonl`` with one row per example
    (``{"image": "images/NNNNNN.png", **example_row(...)}``); or, with `shards`, webdataset tars
    ``shards/shard-NNNNNN.tar`` of `shard_size` samples, one per example: ``{key}.png`` +
    ``{key}.json`` (the row). Both write ``info.json`` (config, per-task counts). Returns the
    manifest path, or the shard folder.
    """
    if n_scenes < 1 or shard_size < 1:
        raise ConfigError(f"n_scenes and shard_size must be >= 1, got {n_scenes}, {shard_size}")
    out, counts, n = Path(out_dir), Counter(), 0
    (out / ("shards" if shards else "images")).mkdir(parents=True, exist_ok=True)
    manifest = None if shards else open(out / "manifest.jsonl", "w", encoding="utf-8")
    tar = None
    try:
        for i, scene, examples in iter_scenes(n_scenes, cfg):
            png, rel = _png(scene.image), f"images/{i:06d}.png"
            if manifest:
                (out / rel).write_bytes(png)
            for j, ex in enumerate(examples):
                row, n = example_row(ex, i, cfg.image_size), n + 1
                counts[f"{ex.task}/{ex.subtask}"] += 1
                if manifest:
                    manifest.write(json.dumps({"image": rel} | row) + "\n")
                    continue
                if (n - 1) % shard_size == 0:  # start the next shard
                    if tar is not None:
                        tar.close()
                    path = out / "shards" / f"shard-{(n - 1) // shard_size:06d}.tar"
                    tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
                _tar_add(tar, f"{i:06d}_{j:02d}.png", png)
                _tar_add(tar, f"{i:06d}_{j:02d}.json", json.dumps(row).encode())
    finally:
        for f in (manifest, tar):
            if f is not None:
                f.close()
    info = {"config": asdict(cfg), "n_scenes": n_scenes, "counts": dict(sorted(counts.items()))}
    (out / "info.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return out / "shards" if shards else out / "manifest.jsonl"


def main(argv: list[str] | None = None) -> None:
    """``python -m vlmkit.data.synth OUT --num-scenes N [--seed S] [--shards]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vlmkit.data.synth", description=main.__doc__)
    p.add_argument("out_dir")
    p.add_argument("--num-scenes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="use another seed for a held-out split")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--examples-per-scene", type=int, default=4)
    p.add_argument("--shards", action="store_true", help="write webdataset tar shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    a = p.parse_args(argv)
    cfg = SynthConfig(seed=a.seed, image_size=a.image_size, examples_per_scene=a.examples_per_scene)
    path = write_dataset(a.out_dir, a.num_scenes, cfg, shards=a.shards, shard_size=a.shard_size)
    print(f"wrote {a.num_scenes} scenes to {path}")


if __name__ == "__main__":
    main()
