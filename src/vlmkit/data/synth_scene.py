"""The synthetic world and its renderer: config, scene dataclasses and `generate_scene`.

The world is small enough for a few-M-parameter PaliGemma trained on CPU to master, yet every
PaLI task is real: the answer must be read off the pixels.

- A light, lightly textured background; 1-4 flat shapes (circle, square, triangle, star, diamond)
  in clearly distinct colours; each (colour, shape) pair at most once per scene, so "the red
  circle" always names exactly one object. Shapes never overlap, so boxes are exact.
- With probability `word_prob` a scene also holds one upper-case word (fewer shapes then).

Boxes are pixel ``(x1, y1, x2, y2)`` with x2/y2 exclusive, i.e. continuous edge coordinates:
a shape whose pixels span columns 3..9 has x1=3, x2=10. They are measured from the rendered mask.

The prompts and answers built from a scene live in `vlmkit.data.synth_examples`; the public
entry point (and dataset writer) is `vlmkit.data.synth`.

Not supported: overlapping or rotated shapes, segmentation targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmkit.errors import ConfigError

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
