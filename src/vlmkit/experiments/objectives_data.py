"""Data of the objectives experiment: captioned synthetic scenes and colourised Fashion-MNIST,
each with a true zero-shot split of held-out compositions.

Synthetic scenes (32 px): 1-2 shapes of 6 colours x 5 kinds, captioned left to right ("a red
circle and a blue square"). Five (colour, shape) pairs, one per shape (`SYNTH_HELD_OUT`), never
occur in training, although each colour and each shape does with other partners.

Fashion-MNIST (Debian's `dataset-fashion-mnist`): each 28 px garment is tinted with one of the
same 6 colours on a light background and padded to 32 px; the caption is "a red sandal". Holding
out whole classes is not feasible with class-name captions: a class name never seen in training
is an unknown token sequence to the text side, so its zero-shot accuracy is chance by
construction. Instead one colour per class is held out (`FASHION_HELD_OUT`, 10 of the 60
pairs): every class and every colour is seen, never those combinations. Training images come
from the train split, every evaluation image from the test split.

Evaluation sets per source:
- `zs_unseen`: images of the held-out pairs, classified among ALL pairs (30 / 60 candidates, so
  a model that only knows the seen pairs is wrong, and one that reads only colour or only kind
  is at best at chance among 5 / 6 candidates).
- `zs_class` (Fashion-MNIST): the 10 classes on test images of any colour, prompts "a {colour}
  {class}" ensembled over the 6 colours (class names only, no colour given).
- `retrieval`: held-out images of seen pairs with pairwise distinct captions (one right text
  per image and one right image per text).
- `captions`: held-out images of seen pairs and their reference caption, for CIDEr-D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmkit.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from vlmkit.data.synth import COLORS, SynthConfig, generate_scene
from vlmkit.training.recipes.contrastive import ImageTextPairs, caption_objects, unique_captions

EXP_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
EXP_SHAPES = ("circle", "square", "triangle", "star", "diamond")
SYNTH_HELD_OUT = frozenset({("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "star"),
                            ("purple", "diamond")})
FASHION_HELD_OUT = frozenset((EXP_COLORS[k % len(EXP_COLORS)], name) for k, name in enumerate(CLASS_NAMES))
IMAGE_SIZE = 32


@dataclass(kw_only=True)
class ZeroShotSet:
    """images uint8 [N, 3, S, S], labels int64 [N] indexing `class_names`; prompts are
    `templates` filled with a class name (several templates are ensembled)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    templates: list[str]


@dataclass(kw_only=True)
class Source:
    """One data source of the experiment: training pairs and its evaluation sets (module doc)."""

    name: str
    train: ImageTextPairs
    zs_unseen: ZeroShotSet
    retrieval: ImageTextPairs
    captions: ImageTextPairs
    zs_class: ZeroShotSet | None = None


def _pairs_names(colors, kinds) -> list[str]:
    return [f"{c} {k}" for c in colors for k in kinds]


def _synth_scenes(n: int, seed: int, shapes: tuple[int, int], keep) -> list:
    cfg = SynthConfig(image_size=IMAGE_SIZE, min_shapes=shapes[0], max_shapes=shapes[1], word_prob=0.0,
                      shape_size=(0.3, 0.45), colors=EXP_COLORS, shapes=EXP_SHAPES, seed=seed)
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:  # rejection sampling: ~70% of 1-2 shape scenes avoid the held-out pairs
        scene = generate_scene(rng, cfg)
        if scene.objects and keep(scene):
            out.append(scene)
    return out


def _to_pairs(scenes: list) -> ImageTextPairs:
    images = torch.from_numpy(np.stack([np.asarray(s.image) for s in scenes])).permute(0, 3, 1, 2)  # [N, 3, S, S]
    return ImageTextPairs(images.contiguous(), [caption_objects(s.objects) for s in scenes])


def synth_source(n_train: int, n_eval: int, seed: int = 0) -> Source:
    """Synthetic-scene source; different seeds for training and each evaluation set."""
    def seen(scene) -> bool:
        return all((o.color, o.shape) not in SYNTH_HELD_OUT for o in scene.objects)

    train = _to_pairs(_synth_scenes(n_train, seed, (1, 2), seen))
    held = _synth_scenes(n_eval, seed + 1, (1, 1), lambda s: not seen(s))
    names = _pairs_names(EXP_COLORS, EXP_SHAPES)
    labels = torch.tensor([names.index(f"{s.objects[0].color} {s.objects[0].shape}") for s in held])
    zs = ZeroShotSet(images=_to_pairs(held).images, labels=labels, class_names=names, templates=["a {}"])
    two = _to_pairs(_synth_scenes(4 * n_eval, seed + 2, (2, 2), seen))
    keep = unique_captions(two, n_eval)
    retrieval = ImageTextPairs(two.images[keep], [two.texts[i] for i in keep])
    captions = _to_pairs(_synth_scenes(n_eval, seed + 3, (1, 2), seen))
    return Source(name="synth", train=train, zs_unseen=zs, retrieval=retrieval, captions=captions)


def colourise(garments: np.ndarray, colors: list[str], rng: np.random.Generator) -> torch.Tensor:
    """uint8 [N, 28, 28] garments (white on black) -> uint8 [N, 3, 32, 32]: each tinted with its
    colour (jittered like the synthetic shapes) over a light, slightly noisy background."""
    n = len(garments)
    alpha = np.pad(garments, ((0, 0), (2, 2), (2, 2))).astype(np.float32)[..., None] / 255.0  # [N, 32, 32, 1]
    rgb = np.array([COLORS[c] for c in colors], np.float32) + rng.integers(-12, 13, (n, 3))  # [N, 3]
    background = rng.uniform(190, 235, (n, 1, 1, 1)) + rng.normal(0, 4, (n, IMAGE_SIZE, IMAGE_SIZE, 3))
    out = background * (1 - alpha) + rgb[:, None, None, :] * alpha  # [N, 32, 32, 3]
    return torch.from_numpy(np.clip(np.round(out), 0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def _fashion_pairs(images, labels, rng, colour_of) -> tuple[torch.Tensor, list[str], list[str]]:
    colors = [colour_of(int(y)) for y in labels]
    texts = [f"a {c} {CLASS_NAMES[y]}" for c, y in zip(colors, labels)]
    return colourise(images, colors, rng), colors, texts


def fashion_source(n_train: int, n_eval: int, seed: int = 0, root=None) -> Source:
    """Colourised Fashion-MNIST source (train split for training, test split for evaluation)."""
    rng = np.random.default_rng(seed)
    train_split, test_split = load_fashion_mnist("train", root), load_fashion_mnist("test", root)
    allowed = {y: [c for c in EXP_COLORS if (c, name) not in FASHION_HELD_OUT] for y, name in enumerate(CLASS_NAMES)}
    held_colour = {CLASS_NAMES.index(name): c for c, name in FASHION_HELD_OUT}
    idx = rng.permutation(len(train_split.labels))[:n_train]
    images, _, texts = _fashion_pairs(train_split.images[idx], train_split.labels[idx], rng,
                                      lambda y: allowed[y][rng.integers(len(allowed[y]))])
    train = ImageTextPairs(images, texts)
    test = rng.permutation(len(test_split.labels))
    parts = [test[k * n_eval:(k + 1) * n_eval] for k in range(3)]  # disjoint test images per set
    names = _pairs_names(EXP_COLORS, CLASS_NAMES)
    imgs, colors, _ = _fashion_pairs(test_split.images[parts[0]], test_split.labels[parts[0]], rng,
                                     lambda y: held_colour[y])
    zs_labels = torch.tensor([names.index(f"{c} {CLASS_NAMES[y]}") for c, y in zip(colors, test_split.labels[parts[0]])])
    zs = ZeroShotSet(images=imgs, labels=zs_labels, class_names=names, templates=["a {}"])
    any_colour = lambda y: EXP_COLORS[rng.integers(len(EXP_COLORS))]  # noqa: E731
    imgs, _, _ = _fashion_pairs(test_split.images[parts[1]], test_split.labels[parts[1]], rng, any_colour)
    zs_class = ZeroShotSet(images=imgs, labels=torch.from_numpy(test_split.labels[parts[1]]),
                           class_names=list(CLASS_NAMES), templates=[f"a {c} {{}}" for c in EXP_COLORS])
    seen = lambda y: allowed[y][rng.integers(len(allowed[y]))]  # noqa: E731
    imgs, _, texts = _fashion_pairs(test_split.images[parts[2]], test_split.labels[parts[2]], rng, seen)
    keep = unique_captions(ImageTextPairs(imgs, texts), n_eval)
    retrieval = ImageTextPairs(imgs[keep], [texts[i] for i in keep])
    return Source(name="fashion", train=train, zs_unseen=zs, retrieval=retrieval, captions=ImageTextPairs(imgs, texts),
                  zs_class=zs_class)
