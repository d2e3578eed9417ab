"""Bad input for the native-resolution families (Pixtral as LLaVA, Mistral 3, Qwen2-VL) through
`vlmkit generate`: an image smaller than one patch and more images than the context holds are one
line and exit 2; an image over the pixel budget is resized down, said in one line with --verbose.

The folders are `vlmkit create` debug folders with a short context (96 positions) and, for
Qwen2-VL, a small max_pixels budget (4 x 56 x 56), so that a few small images reach the limits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.bad_inputs_common import edit_json, run_bad
from vlmkit.cli import main

# family -> (vlmkit create arguments, prompt of one image, the tower's patch in pixels (before Mistral 3's
# 2 x 2 merge), what budget the note names)
FAMILIES = {
    "pixtral": (["--family", "llava", "--preset", "pixtral-debug"], "[IMG]what is it", 8, "64-px longest edge"),
    "mistral3": (["--family", "mistral3", "--preset", "debug"], "[IMG]what is it", 8, "64-px longest edge"),
    "qwen2_vl": (["--family", "qwen2_vl", "--preset", "debug"],
                 "<|vision_start|><|image_pad|><|vision_end|>what is it", 14, "max_pixels 12544"),
}
CONTEXT = 96


def _short_context(config: dict) -> None:
    for d in (config, config.get("text_config") or {}):
        if "max_position_embeddings" in d:
            d["max_position_embeddings"] = CONTEXT


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("native_bad")
    for name, (args, *_) in FAMILIES.items():
        folder = root / name
        assert main(["create", *args, str(folder)]) == 0
        edit_json(folder / "config.json", _short_context)
        if name == "qwen2_vl":
            edit_json(folder / "preprocessor_config.json",
                      lambda d: d.update(size={"shortest_edge": 56 * 56, "longest_edge": 4 * 56 * 56}))
    return {name: root / name for name in FAMILIES}


def png(folder: Path, name: str, height: int, width: int) -> Path:
    path = folder / name
    Image.fromarray(np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)).save(path)
    return path


def generate(folder: Path, prompt: str, images: list[Path], *extra: str) -> list[str]:
    return ["generate", "--model", str(folder), *[a for p in images for a in ("--image", str(p))], "--prompt", prompt,
            "--max-new-tokens", "2", *extra]


@pytest.mark.parametrize("family", FAMILIES)
def test_image_smaller_than_a_patch(family, folders, tmp_path, capsys):
    _, prompt, patch, _ = FAMILIES[family]
    ok, thin = png(tmp_path, "ok.png", 32, 40), png(tmp_path, "thin.png", patch - 1, 40)
    message = run_bad(capsys, generate(folders[family], prompt * 2, [ok, thin]), "smaller than one", tmp_path,
                      folders[family])
    assert f"({patch - 1} x 40 pixels) is smaller than one {patch} x {patch} patch" in message


@pytest.mark.parametrize("family", FAMILIES)
def test_more_images_than_the_context_holds(family, folders, tmp_path, capsys):
    _, prompt, _, _ = FAMILIES[family]
    image = png(tmp_path, "a.png", 112, 112)  # 16 (Qwen2-VL) to 72 (Pixtral) tokens
    assert main(generate(folders[family], prompt, [image])) == 0  # one image fits
    capsys.readouterr()
    message = run_bad(capsys, generate(folders[family], prompt * 8, [image] * 8), "exceeds the model's context",
                      tmp_path, folders[family])
    assert f"context of {CONTEXT}" in message


@pytest.mark.parametrize("family", FAMILIES)
def test_image_over_the_budget_is_resized_and_said_with_verbose(family, folders, tmp_path, capsys):
    _, prompt, _, budget = FAMILIES[family]
    big = png(tmp_path, "big.png", 150, 200)
    assert main(generate(folders[family], prompt, [big])) == 0
    assert capsys.readouterr().err == ""  # quiet by default
    assert main(generate(folders[family], prompt, [big], "--verbose")) == 0
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("vlmkit: ") and "(150 x 200 pixels)" in lines[0], lines
    assert f"is larger than {'the ' if 'edge' in budget else ''}{budget}: resized down to" in lines[0]
    small = png(tmp_path, "small.png", 32, 40)  # within the budget: nothing to say
    assert main(generate(folders[family], prompt, [small], "--verbose")) == 0
    assert capsys.readouterr().err == ""
