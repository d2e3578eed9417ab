"""The CLI end to end: README commands, JSON schema, drawing, one-line errors, --help snapshot."""

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import build_parser, main
from vlmkit.weights.registry import bundled_models

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def debug_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "debug-model"
    assert main(["create", str(out)]) == 0
    return out


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_readme_main_job_runs(tmp_path, monkeypatch, capsys):
    """Run the vlmkit steps of the README's main-job command exactly as written (minus install):
    `vlmkit demo` on the bundled default model, which writes its page into ./vlmkit-demo."""
    main_job, _ = _readme_commands()
    steps = [s.strip() for s in main_job.split("&&") if s.strip().startswith(".venv/bin/vlmkit")]
    assert steps == [".venv/bin/vlmkit demo"]
    if "vlmkit-shapes-tiny" not in bundled_models():
        pytest.skip("the bundled model is not in this checkout")
    monkeypatch.chdir(tmp_path)
    for step in steps:
        assert main(shlex.split(step)[1:]) == 0, step
    assert "correct:" in capsys.readouterr().out
    assert (tmp_path / "vlmkit-demo" / "index.html").is_file()


def test_ci_runs_readme_test_command():
    _, test_cmd = _readme_commands()
    ci = (ROOT / ".ci/run").read_text()
    for part in test_cmd.split("&&"):
        assert part.strip() in ci


def test_generate_json_and_draw(debug_model, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.new("RGB", (80, 50), "blue").save(img)
    out_png = tmp_path / "out.png"
    rc = main(["generate", "--model", str(debug_model), "--image", str(img), "--task", "detect",
               "--objects", "cat;dog", "--max-new-tokens", "4", "--json", "--draw", str(out_png)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "detect" and d["prompt"] == "detect cat ; dog"
    assert set(d) >= {"text", "token_ids", "boxes", "masks", "errors", "timing"}
    assert len(d["token_ids"]) <= 4
    assert Image.open(out_png).size == (80, 50)


def test_info(debug_model, capsys):
    assert main(["info", "--model", str(debug_model), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model_type"] == "paligemma" and d["num_image_tokens"] == 16
    assert int(d["params.total"].replace(",", "")) > 100_000


@pytest.mark.parametrize("case", ["missing_image", "corrupt_image", "no_model", "no_config",
                                  "no_tokenizer", "no_image_token", "prompt_too_long", "pickle_only",
                                  "bad_dtype"])
def test_errors_are_one_line(case, debug_model, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    model, prompt, extra = str(debug_model), "caption en", []
    if case == "missing_image":
        img = tmp_path / "nope.png"
    elif case == "corrupt_image":
        img = tmp_path / "bad.png"
        img.write_bytes(b"\x89PNG not really")
    elif case == "no_model":
        model = str(tmp_path / "nothing")
    elif case in ("no_config", "no_tokenizer", "pickle_only", "no_image_token"):
        broken = tmp_path / "broken"
        broken.mkdir()
        for f in debug_model.iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        gone = {"no_config": ["config.json"], "no_tokenizer": ["tokenizer.json", "tokenizer.model"],
                "pickle_only": ["model.safetensors"], "no_image_token": ["tokenizer.model"]}[case]
        if case == "no_image_token":  # a tokenizer without the <image> placeholder
            tj = broken / "tokenizer.json"
            tj.write_text(tj.read_text().replace("<image>", "<imagf>"))
        for name in gone:
            (broken / name).unlink()
        if case == "pickle_only":
            (broken / "pytorch_model.bin").write_bytes(b"x")
        model = str(broken)
    elif case == "prompt_too_long":
        prompt = "word " * 9000
    elif case == "bad_dtype":
        extra = ["--dtype", "float8"]
    rc = main(["generate", "--model", model, "--image", str(img), "--prompt", prompt, "--max-new-tokens", "2", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("vlmkit: error:") and "\n" not in err and "Traceback" not in err
    if case == "no_image_token":
        assert "<image>" in err


def test_subcommands_listed():
    text = build_parser().format_help()
    for cmd in ("generate", "info", "create", "data", "eval", "demo", "train", "train-contrastive", "experiment"):
        assert cmd in text


def test_help_snapshot():
    """`vlmkit generate --help` is a user-facing contract: options must not vanish silently."""
    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for opt in ("--model", "--image", "--prompt", "--task", "--objects", "--max-new-tokens", "--temperature",
                "--top-p", "--top-k", "--seed", "--dtype", "--json", "--draw", "--stream", "--mask-vae",
                "--device", "--force", "--video", "--max-frames", "--frame-stride", "--chat", "--messages"):
        assert opt in text


def test_video_frames_become_images(debug_model, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(10):
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(frames / f"f{i}.png")
    rc = main(["generate", "--model", str(debug_model), "--video", str(frames), "--max-frames", "3",
               "--task", "caption", "--max-new-tokens", "2", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["num_images"] == 3 and d["timing"]["new_tokens"] >= 1
    assert main(["generate", "--model", str(debug_model), "--task", "caption"]) == 2


class _FixedPipe:
    """Stands in for a trained model: always answers `text` (the CLI's parsing/drawing is tested)."""

    def __init__(self, text):
        self.text = text

    def generate(self, prompt, images, sampling=None, on_token=None):
        from vlmkit.generation import GenerationResult

        return GenerationResult(self.text, [5, 6], "eos", {"prefill_s": 0.0})


@pytest.mark.parametrize("task,answer", [
    ("detect", "<loc0256><loc0128><loc0768><loc0512> cat ; <loc0000><loc0600><loc0400><loc1000> dog"),
    ("segment", "<loc0256><loc0128><loc0768><loc0512>" + "".join(f"<seg{i:03d}>" for i in range(16)) + " cat"),
])
def test_task_json_and_drawing(task, answer, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("vlmkit.pipeline.load", lambda *a, **k: _FixedPipe(answer))
    img = tmp_path / "x.png"
    Image.new("RGB", (200, 100), (255, 255, 255)).save(img)
    out_png = tmp_path / "o.png"
    rc = main(["generate", "--image", str(img), "--task", task, "--objects", "cat;dog", "--json",
               "--draw", str(out_png)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    cat = d["boxes"][0]
    # <loc0256> of height 100 -> y1 = 25; <loc0128> of width 200 -> x1 = 25; y2 = 75, x2 = 100
    assert (cat["label"], cat["x1"], cat["y1"], cat["x2"], cat["y2"]) == ("cat", 25.0, 25.0, 100.0, 75.0)
    if task == "segment":
        assert d["masks"][0]["codes"] == list(range(16)) and d["masks"][0]["area"] is None
    else:
        assert [b["label"] for b in d["boxes"]] == ["cat", "dog"]
    drawn = Image.open(out_png).convert("RGB")
    assert drawn.size == (200, 100)
    edge = [drawn.getpixel((x, 25)) for x in range(30, 95)]  # the top edge of the cat box
    assert any(p != (255, 255, 255) for p in edge)
    assert drawn.getpixel((150, 95)) == (255, 255, 255)  # far from every box
