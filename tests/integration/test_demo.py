"""`vlmkit demo`: a random debug model runs every task (answers wrong, pages complete), and an
oracle pipeline that answers with the ground truth gets every check ✓."""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.synth import generate_scene
from vlmkit.demo import (MIN_FRESH_SEED, DemoConfig, add_demo_arguments, demo_world, run_demo,
                         run_demo_args, scene_queries)
from vlmkit.tasks.parsing import boxes_to_loc_text
from vlmkit.weights.create import create_checkpoint

SEED, N = 12345, 5


def _queries(seed: int, n: int, questions: int = 3):
    world = demo_world(seed)
    scenes = [generate_scene(np.random.default_rng([seed, i]), world) for i in range(n)]
    return scenes, [q for i, s in enumerate(scenes)
                    for q in scene_queries(s, i, world, np.random.default_rng([seed, i, 1]), questions)]


def _images(page: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


@pytest.fixture(scope="module")
def debug_model(tmp_path_factory):
    return create_checkpoint(tmp_path_factory.mktemp("demo") / "model", "debug")


def test_demo_cli_writes_page_and_grid(debug_model, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="vlmkit demo")
    add_demo_arguments(parser)
    out = tmp_path / "demo"
    args = parser.parse_args(["--model", str(debug_model), "--out", str(out), "--num-scenes", str(N),
                              "--seed", str(SEED), "--max-new-tokens", "8"])
    assert run_demo_args(args) == 0
    printed = capsys.readouterr().out
    assert f"seed {SEED}" in printed and str(out / "index.html") in printed
    scenes, queries = _queries(SEED, N)
    page = (out / "index.html").read_text(encoding="utf-8")
    # Every prompt (questions included) and every truth is on the page and in the terminal.
    for q in queries:
        assert html.escape(q.prompt) in page and q.prompt in printed
        if q.task != "detect":
            assert html.escape(q.truth) in page
    assert any(q.task == "vqa" for q in queries) and any(q.task == "detect" for q in queries)
    # Two 256 px pictures per scene (truth, model), embedded, nothing linked.
    images = _images(page)
    assert len(images) == 2 * N and all(im.size == (256, 256) for im in images)
    assert "<img src=\"http" not in page
    # 5 scenes -> 4 panels in the first row, 1 in the second; panel 256 + band 40, gaps 8.
    grid = Image.open(out / "grid.png")
    assert grid.size == (4 * 256 + 5 * 8, 2 * (256 + 40) + 3 * 8)
    assert "✗" in printed  # a random model does not know the answers


class OraclePipe:
    """Answers every prompt with its ground truth (detect: the truth boxes as <loc> text)."""

    def __init__(self, seed: int, n: int):
        scenes, queries = _queries(seed, n)
        self.answers = {}
        for q in queries:
            image = scenes[q.scene].image
            text = boxes_to_loc_text(q.truth_boxes, *image.size) if q.task == "detect" else q.truth
            self.answers[(image.tobytes(), q.prompt)] = text

    def generate_batch(self, prompts, images, sampling=None):
        return [SimpleNamespace(text=self.answers[(im.tobytes(), p)]) for p, im in zip(prompts, images)]


def test_demo_oracle_gets_everything_right(tmp_path):
    lines = []
    result = run_demo(OraclePipe(SEED, N), tmp_path, DemoConfig(num_scenes=N, seed=SEED), log=lines.append)
    assert result.items and all(it.correct for it in result.items)
    assert set(result.tally()) >= {"caption", "vqa", "detect"}
    assert sum(n for _, n in result.tally().values()) == len(result.items)
    assert all("✓" in line for line in lines if line.startswith("  "))
    det = [it for it in result.items if it.task == "detect"]
    assert all(len(it.pred_boxes) == len(it.truth_boxes) > 0 for it in det)
    # Predicted boxes are drawn: the model panel differs from the plain upscaled scene.
    scene0 = result.scenes[0].image.resize((256, 256), Image.NEAREST)
    page = result.html_path.read_text(encoding="utf-8")
    model_panel = _images(page)[1].convert("RGB")
    assert np.abs(np.asarray(model_panel, np.int16) - np.asarray(scene0, np.int16)).sum() > 0


class Silent:
    def generate_batch(self, prompts, images, sampling=None):
        return [SimpleNamespace(text="") for _ in prompts]


def test_fresh_seed_is_unused_by_training(tmp_path):
    lines = []
    result = run_demo(Silent(), tmp_path, DemoConfig(num_scenes=1), log=lines.append)
    assert result.seed >= MIN_FRESH_SEED  # above every training / eval / regression seed
    assert f"seed {result.seed}" in lines[0]
    assert not any(it.correct for it in result.items if it.task in ("caption", "detect"))
