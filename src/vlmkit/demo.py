"""`vlmkit demo`: fresh synthetic scenes, every PaLI task on each, answers next to the truth.

For each scene (rendered by `vlmkit.data.synth` with a seed no training or evaluation split uses)
the model is asked for a caption, a few questions built from the scene (one per randomly picked
question kind: colour, shape, count, position, existence), one ``detect <shape>`` per shape
present (the boxes are merged for drawing) and ``ocr`` when the scene shows a word. The prompts
are exactly the training syntax of `synth`, so a model trained on that world should get them
right; any PaliGemma folder runs (a random model just answers wrongly).

Outputs in `out_dir`: ``index.html`` (self-contained: base64 PNGs of truth and predicted boxes,
and a table of prompt / answer / truth / ✓✗ per scene) and ``grid.png`` (one predicted panel per
scene, GRID_COLS per row, with the scene's score and predicted caption in a band below).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmkit import cli_types as T
from vlmkit.data.synth import Scene, SynthConfig, all_examples, generate_scene
from vlmkit.errors import ConfigError, ImageError
from vlmkit.eval.detection import ImageBoxes, precision_recall
from vlmkit.eval.text_metrics import normalize_vqa_answer
from vlmkit.generation import SamplingConfig
from vlmkit.outputs import atomic_folder
from vlmkit.tasks.draw import draw_results
from vlmkit.tasks.parsing import Box, clean_text, parse_detections

# Seeds used by training (0, 1), the reported evaluation (1000) and the regression test (424242)
# are all below this; a time-derived seed is drawn above it, so demo scenes are never seen data.
MIN_FRESH_SEED = 1_000_000
GRID_COLS, GAP, BAND = 4, 8, 40  # grid layout: panels per row, pixels between panels, text band
TASK_ORDER = ("caption", "vqa", "detect", "ocr")


@dataclass(kw_only=True)
class DemoConfig:
    """What the demo renders and asks. `seed` None: a fresh time-derived seed (printed)."""

    num_scenes: int = 4
    seed: int | None = None
    questions_per_scene: int = 3
    max_new_tokens: int = 48
    batch_size: int = 16
    display_size: int = 256  # side of one scene panel in pixels (scenes are upscaled, nearest)

    def __post_init__(self) -> None:
        if not 1 <= self.num_scenes <= 64:
            raise ConfigError(f"num_scenes must be in [1, 64], got {self.num_scenes}")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.questions_per_scene < 0 or self.batch_size < 1 or self.display_size < 32:
            raise ConfigError("need questions_per_scene >= 0, batch_size >= 1 and display_size >= 32")


@dataclass(kw_only=True)
class DemoItem:
    """One asked task on one scene. For detect, `prompt` lists the queries and boxes are merged."""

    scene: int
    task: str
    prompt: str
    prediction: str
    truth: str
    correct: bool
    pred_boxes: list[Box] = field(default_factory=list)
    truth_boxes: list[Box] = field(default_factory=list)


@dataclass(kw_only=True)
class DemoResult:
    seed: int
    scenes: list[Scene]
    items: list[DemoItem]
    html_path: Path
    grid_path: Path

    def tally(self) -> dict[str, tuple[int, int]]:
        """task -> (correct, asked), in TASK_ORDER, tasks never asked left out."""
        out = {}
        for task in TASK_ORDER:
            hits = [it.correct for it in self.items if it.task == task]
            if hits:
                out[task] = (sum(hits), len(hits))
        return out


@dataclass(kw_only=True)
class _Query:
    scene: int
    task: str
    prompt: str
    truth: str
    truth_boxes: list[Box] = field(default_factory=list)


def fresh_seed() -> int:
    """A seed from the clock, in [MIN_FRESH_SEED, 2**31): unlike any training or eval seed."""
    return MIN_FRESH_SEED + time.time_ns() // 1000 % (2**31 - MIN_FRESH_SEED)


def demo_world(seed: int) -> SynthConfig:
    """The synthetic world of the demo: synth defaults, words on half the scenes (more OCR)."""
    return SynthConfig(seed=seed, word_prob=0.5)


def scene_queries(scene: Scene, index: int, world: SynthConfig, rng: np.random.Generator,
                  num_questions: int) -> list[_Query]:
    """Caption, `num_questions` VQA questions of distinct kinds, a detect per shape, OCR."""
    pool = all_examples(scene, world)
    out = [_Query(scene=index, task="caption", prompt=e.prefix, truth=e.suffix)
           for e in pool.get("caption", {}).get("caption", [])]
    vqa = pool.get("vqa", {})
    for kind in [list(vqa)[k] for k in rng.permutation(len(vqa))][:num_questions]:
        ex = vqa[kind][int(rng.integers(len(vqa[kind])))]
        out.append(_Query(scene=index, task="vqa", prompt=ex.prefix, truth=ex.suffix))
    for shape in sorted({o.shape for o in scene.objects}, key=world.shapes.index):
        boxes = [Box(shape, *map(float, o.box)) for o in scene.objects if o.shape == shape]
        out.append(_Query(scene=index, task="detect", prompt=f"detect {shape}", truth="", truth_boxes=boxes))
    if scene.word is not None:
        out.append(_Query(scene=index, task="ocr", prompt="ocr", truth=scene.word.text))
    return out


def _answers(pipe, queries: list[_Query], scenes: list[Scene], cfg: DemoConfig) -> list[str]:
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens)
    texts = []
    for s in range(0, len(queries), cfg.batch_size):
        chunk = queries[s:s + cfg.batch_size]
        results = pipe.generate_batch([q.prompt for q in chunk], [scenes[q.scene].image for q in chunk], sampling)
        texts += [r.text for r in results]
    return texts


def _boxes_text(boxes: list[Box]) -> str:
    return "; ".join(f"{b.label} [{b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f}]" for b in boxes) or "(no boxes)"


def _as_image_boxes(boxes: list[Box]) -> ImageBoxes:
    return ImageBoxes(boxes=[[b.x1, b.y1, b.x2, b.y2] for b in boxes], labels=[b.label for b in boxes])


def _detect_item(index: int, queries: list[_Query], texts: list[str], size: tuple[int, int]) -> DemoItem:
    """Merge one scene's detect queries: correct when every box is found at IoU >= 0.5, no extras."""
    pred = [b for t in texts for b in parse_detections(t, *size).boxes]
    truth = [b for q in queries for b in q.truth_boxes]
    pr = precision_recall([_as_image_boxes(pred)], [_as_image_boxes(truth)], iou_threshold=0.5)
    ok = pr.false_positives == 0 and pr.false_negatives == 0
    shown = f"{_boxes_text(pred)} ({pr.true_positives}/{len(truth)} found)"
    return DemoItem(scene=index, task="detect", prompt=" | ".join(q.prompt for q in queries),
                    prediction=shown, truth=_boxes_text(truth), correct=ok, pred_boxes=pred, truth_boxes=truth)


def _is_correct(task: str, pred: str, truth: str) -> bool:
    if task == "vqa":
        return normalize_vqa_answer(pred) == normalize_vqa_answer(truth)
    if task == "caption":
        return " ".join(pred.lower().split()) == " ".join(truth.lower().split())
    return pred == truth  # OCR: case and spelling count


def _items(queries: list[_Query], texts: list[str], scenes: list[Scene]) -> list[DemoItem]:
    items: list[DemoItem] = []
    for i, scene in enumerate(scenes):
        mine = [(q, t) for q, t in zip(queries, texts) if q.scene == i]
        det = [(q, t) for q, t in mine if q.task == "detect"]
        for q, t in mine:
            if q.task != "detect":
                pred = clean_text(t)
                items.append(DemoItem(scene=i, task=q.task, prompt=q.prompt, prediction=pred, truth=q.truth,
                                      correct=_is_correct(q.task, pred, q.truth)))
        if det:
            items.append(_detect_item(i, [q for q, _ in det], [t for _, t in det], scene.image.size))
    return items


def run_demo(pipe, out_dir: str | Path, cfg: DemoConfig | None = None,
             log: Callable[[str], None] = print, overwrite: bool = True) -> DemoResult:
    """Render fresh scenes, ask `pipe` every task, print the answers, write index.html + grid.png.

    `pipe` needs `generate_batch(prompts, images, sampling)` (a `vlmkit.pipeline.Pipeline`). The two
    files appear together (`vlmkit.outputs.atomic_folder`); a non-empty `out_dir` is refused unless
    `overwrite`, and even then only those two files are replaced.
    """
    cfg = cfg or DemoConfig()
    seed = cfg.seed if cfg.seed is not None else fresh_seed()
    world = demo_world(seed)
    scenes = [generate_scene(np.random.default_rng([seed, i]), world) for i in range(cfg.num_scenes)]
    queries = [q for i, sc in enumerate(scenes)
               for q in scene_queries(sc, i, world, np.random.default_rng([seed, i, 1]), cfg.questions_per_scene)]
    folder = getattr(pipe, "folder", None)
    log(f"vlmkit demo: seed {seed} (--seed {seed} repeats it), {len(scenes)} scenes, "
        f"{len(queries)} prompts" + (f", model {folder}" if folder else ""))
    items = _items(queries, _answers(pipe, queries, scenes, cfg), scenes)
    for line in format_items(items, scenes):
        log(line)
    out = Path(out_dir)
    result = DemoResult(seed=seed, scenes=scenes, items=items, html_path=out / "index.html",
                        grid_path=out / "grid.png")
    panels = [_panel(sc, [it for it in items if it.scene == i], cfg.display_size, predicted=True)
              for i, sc in enumerate(scenes)]
    with atomic_folder(out, overwrite) as tmp:
        _save(grid_image(panels, items, cfg.display_size), tmp / result.grid_path.name)
        _write_text(tmp / result.html_path.name, render_html(result, cfg.display_size, str(folder or "")))
    summary = ", ".join(f"{t} {c}/{n}" for t, (c, n) in result.tally().items())
    log(f"correct: {summary}")
    log(f"wrote {result.html_path}\nwrote {result.grid_path}")
    return result


def format_items(items: list[DemoItem], scenes: list[Scene]) -> list[str]:
    """Terminal lines: a header per scene, then ✓/✗ task prompt -> answer [truth]."""
    lines = []
    for i, scene in enumerate(scenes):
        word = f', the word "{scene.word.text}"' if scene.word else ""
        n = len(scene.objects)
        lines.append(f"scene {i}: {n} shape{'' if n == 1 else 's'}{word}")
        for it in (it for it in items if it.scene == i):
            mark = "✓" if it.correct else "✗"
            lines.append(f"  {mark} {it.task:<7} {it.prompt:<40} -> {it.prediction or '(empty)'}   "
                         f"[truth: {it.truth}]")
    return lines


# ---------------------------------------------------------------------------------------------
# Pictures and the HTML page
# ---------------------------------------------------------------------------------------------


def _panel(scene: Scene, items: list[DemoItem], display: int, *, predicted: bool) -> Image.Image:
    """The scene upscaled to `display` px (nearest: keeps the pixels honest) with boxes drawn."""
    w, h = scene.image.size
    sx, sy = display / w, display / h
    boxes = [b for it in items if it.task == "detect" for b in (it.pred_boxes if predicted else it.truth_boxes)]
    scaled = [Box(b.label, b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy) for b in boxes]
    return draw_results(scene.image.resize((display, display), Image.NEAREST), scaled)


def grid_size(num_scenes: int, display: int) -> tuple[int, int]:
    """(width, height) of grid.png for `num_scenes` panels of `display` px."""
    cols = min(num_scenes, GRID_COLS)
    rows = math.ceil(num_scenes / cols)
    return cols * display + (cols + 1) * GAP, rows * (display + BAND) + (rows + 1) * GAP


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text` cut (with "...") to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def grid_image(panels: list[Image.Image], items: list[DemoItem], display: int) -> Image.Image:
    """Panels in rows of GRID_COLS; under each, the scene's score and predicted caption."""
    grid = Image.new("RGB", grid_size(len(panels), display), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=max(10, BAND // 3))
    cols = min(len(panels), GRID_COLS)
    for i, panel in enumerate(panels):
        x = GAP + (i % cols) * (display + GAP)
        y = GAP + (i // cols) * (display + BAND + GAP)
        grid.paste(panel, (x, y))
        mine = [it for it in items if it.scene == i]
        caption = "caption: " + next((it.prediction or "(empty)" for it in mine if it.task == "caption"), "-")
        score = f"scene {i}: {sum(it.correct for it in mine)}/{len(mine)} correct"
        draw.text((x, y + display + 3), score, fill="black", font=font)
        draw.text((x, y + display + 3 + BAND // 2), _fit(draw, caption, font, display), fill=(60, 60, 60), font=font)
    return grid


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "figure{display:inline-block;margin:0 1em 0 0}img{image-rendering:pixelated}"
        ".ok{color:#1a7f37;font-weight:bold}.bad{color:#c62828;font-weight:bold}")


def _scene_html(i: int, scene: Scene, items: list[DemoItem], display: int) -> str:
    figs = "".join(
        f'<figure><img src="{_data_uri(_panel(scene, items, display, predicted=p))}" width="{display}" '
        f'height="{display}" alt="scene {i} {name}"><figcaption>{name}</figcaption></figure>'
        for p, name in ((False, "ground truth"), (True, "model"))
    )
    rows = "".join(
        f"<tr><td>{it.task}</td><td>{html.escape(it.prompt)}</td><td>{html.escape(it.prediction or '(empty)')}</td>"
        f"<td>{html.escape(it.truth)}</td><td class=\"{'ok' if it.correct else 'bad'}\">"
        f"{'✓' if it.correct else '✗'}</td></tr>" for it in items
    )
    head = "<tr><th>task</th><th>prompt</th><th>model answer</th><th>ground truth</th><th></th></tr>"
    return f"<section><h2>Scene {i}</h2>{figs}<table>{head}{rows}</table></section>"


def render_html(result: DemoResult, display: int, model: str = "") -> str:
    """The self-contained demo page (no external files: images are base64 data URIs)."""
    summary = ", ".join(f"{t} {c}/{n}" for t, (c, n) in result.tally().items())
    sections = "".join(_scene_html(i, sc, [it for it in result.items if it.scene == i], display)
                       for i, sc in enumerate(result.scenes))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vlmkit demo (seed {result.seed})'
            f"</title><style>{_CSS}</style></head><body><h1>vlmkit demo</h1>"
            f"<p>model: <code>{html.escape(model or 'n/a')}</code> &middot; seed {result.seed} &middot; "
            f"{len(result.scenes)} scenes &middot; correct: {summary}</p>{sections}</body></html>\n")


def _save(image: Image.Image, path: Path) -> None:
    try:
        image.save(path, format="PNG")
    except OSError as e:
        raise ImageError(f"cannot write {path}: {e.strerror or e}") from None


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ImageError(f"cannot write {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vlmkit demo` flags to `parser`."""
    parser.description = ("Render fresh synthetic scenes, run caption / VQA / detect / OCR on each, print the "
                          "answers next to the truth and write an HTML page and a PNG grid.")
    parser.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    parser.add_argument("--out", default="vlmkit-demo",
                        help="output folder (default: ./vlmkit-demo; must be absent or empty unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out: index.html and grid.png are replaced, other files kept")
    parser.add_argument("--num-scenes", type=T.positive_int, default=4, help="scenes to render (default 4)")
    parser.add_argument("--seed", type=T.seed, help="scene seed (default: fresh from the clock, printed)")
    parser.add_argument("--questions", type=T.non_negative_int, default=3, help="VQA questions per scene (default 3)")
    parser.add_argument("--max-new-tokens", type=T.positive_int, default=48, help="generation budget per prompt (default 48)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")


def run_demo_args(args: argparse.Namespace) -> int:
    """Run `vlmkit demo` for parsed `args`; returns the exit code (VlmkitError propagates)."""
    from vlmkit.outputs import check_output_dir
    from vlmkit.pipeline import load

    check_output_dir(args.out, args.force)  # before the model runs, not after
    cfg = DemoConfig(num_scenes=args.num_scenes, seed=args.seed, questions_per_scene=args.questions,
                     max_new_tokens=args.max_new_tokens)
    pipe = load(args.model, dtype=args.dtype, device=args.device)
    run_demo(pipe, args.out, cfg, overwrite=args.force)
    return 0
