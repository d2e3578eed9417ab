"""Rough edges of the CLI (issue 16, item 7): `create --help` lists the presets, the bundled model
says what it is, `--json` keeps token ids on one line, `--stream` prints parsed boxes too."""

import json

import numpy as np
import pytest

from vlmkit.cli import build_parser, compact_json, main
from vlmkit.data.synth import generate_scene
from vlmkit.demo import demo_world
from vlmkit.models.registry import families
from vlmkit.weights.registry import DEFAULT_MODEL, bundled_models

NOTE = "vlmkit: note: "


@pytest.fixture(scope="module")
def debug_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "debug-model"
    assert main(["create", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A synthetic scene the bundled model knows, and the name of one of its objects."""
    s = generate_scene(np.random.default_rng([7, 0]), demo_world(7))
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    s.image.save(path)
    return path, s.objects[0].name


needs_bundled = pytest.mark.skipif(DEFAULT_MODEL not in bundled_models(), reason="no bundled model here")


def test_create_help_lists_every_family_and_preset():
    text = build_parser()._subparsers._group_actions[0].choices["create"].format_help()
    epilog = text.split("families and presets")[1]
    flat = " ".join(epilog.split())
    for fam in families():
        assert f"{fam.name} ({fam.kind}):" in epilog
        assert ", ".join(fam.presets) in flat, fam.name  # every preset, in order, wrapped or not
    assert max(len(line) for line in epilog.splitlines()) <= 100


def test_compact_json_puts_number_lists_on_one_line():
    obj = {"text": "a [\n 1,\n 2\n] b", "token_ids": [5, -3, 12], "timing": {"s": 0.5}, "boxes": [{"x": 1.5}],
           "codes": [1.0, 2e-05], "empty": []}
    text = compact_json(obj)
    assert json.loads(text) == obj
    assert '"token_ids": [5, -3, 12]' in text and '"codes": [1.0, 2e-05]' in text
    assert '"x": 1.5' in text.splitlines()[text.splitlines().index('  "boxes": [') + 2]  # objects stay indented


def test_generate_json_token_ids_on_one_line(debug_model, scene, capsys):
    rc = main(["generate", "--model", str(debug_model), "--image", str(scene[0]), "--prompt", "x",
               "--max-new-tokens", "5", "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == ""  # a created checkpoint: no bundled-model note
    d = json.loads(captured.out)
    assert len(d["token_ids"]) >= 2
    line = [ln for ln in captured.out.splitlines() if '"token_ids"' in ln]
    assert line == [f'  "token_ids": {json.dumps(d["token_ids"])},']


@needs_bundled
@pytest.mark.parametrize("model", [None, DEFAULT_MODEL, "folder"])
def test_bundled_model_notes_once_on_stderr(model, scene, capsys):
    extra = [] if model is None else ["--model", str(bundled_models()[DEFAULT_MODEL]) if model == "folder" else model]
    rc = main(["generate", *extra, "--image", str(scene[0]), "--task", "caption", "--max-new-tokens", "3", "--json"])
    captured = capsys.readouterr()
    assert rc == 0
    json.loads(captured.out)  # stdout stays pure JSON
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(NOTE) and DEFAULT_MODEL in lines[0]
    assert "synthetic" in lines[0] and "--model DIR" in lines[0]


@needs_bundled
def test_bundled_note_not_before_a_flag_error(tmp_path, capsys):
    """A bad input is the only stderr line: the note comes after a successful load, never before."""
    assert main(["generate", "--image", str(tmp_path / "nope.png"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmkit: error:")
    assert main(["info"]) == 0 and NOTE not in capsys.readouterr().err


@needs_bundled
def test_stream_prints_boxes_like_plain_output(scene, capsys):
    image, name = scene
    base = ["generate", "--image", str(image), "--task", "detect", "--objects", name, "--max-new-tokens", "24"]
    assert main(base) == 0
    plain = capsys.readouterr().out.splitlines()
    boxes = [ln for ln in plain if ln.startswith("  ")]
    assert boxes and plain[1:] == boxes  # the bundled model finds the object: text, then its boxes
    assert main([*base, "--stream"]) == 0
    streamed = capsys.readouterr().out.splitlines()
    assert streamed[-len(boxes):] == boxes and len(streamed) == 1 + len(boxes)


@needs_bundled
def test_eval_on_bundled_model_notes_once(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "d"), "--num-scenes", "2"]) == 0
    capsys.readouterr()
    rc = main(["eval", "--data", str(tmp_path / "d" / "manifest.jsonl"), "--task", "caption", "--limit", "1",
               "--max-new-tokens", "4", "--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 0 and NOTE not in captured.out
    assert len(lines) == 1 and lines[0].startswith(NOTE)


def test_lora_with_a_freeze_flag_is_one_line_not_silently_ignored(tmp_path, capsys):
    """LoRA freezes every base weight, so `--freeze.vision_tower false` next to it would do nothing:
    refused in one line before anything is loaded or written."""
    argv = ["train", "finetune", "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out"),
            "--lora.enabled", "--freeze.vision_tower", "false"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vlmkit: error: --freeze.vision_tower has no effect with --lora.enabled: LoRA trains only the "
                   "adapters on lora.targets and freezes every other weight; drop one of the two"]
    assert not (tmp_path / "out").exists()
