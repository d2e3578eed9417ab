"""PaliGemma-format examples (prefix -> suffix) read off a synthetic scene.

Tasks (exactly PaliGemma's prompt syntax, no trailing newline):
``caption en`` -> "a red circle and a blue square" (objects left to right);
``answer en what color is the circle?`` -> "red" (also shape, count, position, yes/no);
``detect circle`` / ``detect red circle`` / ``detect circle ; square`` ->
``<locY1><locX1><locY2><locX2> circle ; ...``;  ``ocr`` -> "CAT".

`all_examples` lists every candidate (for eval), `make_examples` samples a few per scene (for
training) and `example_row` turns one into a manifest row. Scenes come from
`vlmkit.data.synth_scene`. Not supported: multilingual prompts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlmkit.data.synth_scene import TASKS, Scene, SceneObject, SynthConfig
from vlmkit.tasks.parsing import coord_to_loc


@dataclass(kw_only=True)
class Example:
    """One PaLI example. `boxes` (detect only) pairs each label with its pixel box."""

    prefix: str
    suffix: str
    task: str
    subtask: str = ""
    boxes: list[tuple[str, tuple[int, int, int, int]]] | None = None


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

