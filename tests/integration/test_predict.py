"""`vlmkit predict`: batched rows equal `vlmkit generate`, resume (a killed run's partial line),
per-row failures, manifests, and one-line errors for bad input."""

import json
from pathlib import Path

import pytest

from vlmkit.cli import main
from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.errors import PromptTooLongError
from vlmkit.predict import predict
from vlmkit.weights.registry import bundled_models

pytestmark = pytest.mark.skipif("vlmkit-shapes-tiny" not in bundled_models(), reason="no bundled model")
DETECT = ["--task", "detect", "--objects", "circle;red square", "--max-new-tokens", "24"]
SAME = ("prompt", "text", "token_ids", "finish_reason", "boxes", "masks", "errors", "num_images", "task")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """5 synthetic scenes (what the bundled model knows): images/ and manifest.jsonl."""
    out = tmp_path_factory.mktemp("scenes") / "synth"
    write_dataset(out, 5, SynthConfig(image_size=64, seed=3))
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["predict", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_batched_rows_equal_generate(scenes, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    rc, stdout, err = _run(capsys, "--images", str(scenes / "images"), *DETECT, "--batch-size", "3", "--out", str(out))
    assert rc == 0, err
    assert stdout.startswith(f"wrote 5 rows to {out}")
    assert "\r" not in err  # no progress bar when stderr is not a terminal
    rows = _lines(out)
    assert [r["id"] for r in rows] == sorted(p.name for p in (scenes / "images").iterdir())
    assert [r["timing"]["batch_size"] for r in rows] == [3, 3, 3, 2, 2]
    assert any(r["boxes"] for r in rows)  # the test would not see box differences otherwise
    for row in rows:
        assert main(["generate", "--image", row["image"], *DETECT, "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert {k: row[k] for k in SAME} == {k: alone[k] for k in SAME}, row["id"]
        assert row["timing"]["seconds"] > 0 and row["timing"]["batch_seconds"] >= row["timing"]["seconds"]


def test_resume_skips_done_rows_and_cuts_a_partial_line(scenes, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    names = sorted(p.name for p in (scenes / "images").iterdir())
    for name in names[:2]:
        (images / name).write_bytes((scenes / "images" / name).read_bytes())
    out = tmp_path / "p.jsonl"
    args = ["--images", str(images), "--task", "caption", "--max-new-tokens", "8", "--out", str(out)]
    assert _run(capsys, *args)[0] == 0
    first = out.read_bytes()
    with open(out, "ab") as f:  # what a run killed inside its append leaves
        f.write(b'{"id": "000002.png", "image": "x", "ta')
    for name in names[2:]:
        (images / name).write_bytes((scenes / "images" / name).read_bytes())
    rc, stdout, _ = _run(capsys, *args)
    assert rc == 0 and "wrote 3 rows" in stdout and "2 already there" in stdout
    assert out.read_bytes().startswith(first)  # earlier rows untouched
    assert sorted(r["id"] for r in _lines(out)) == names  # each once, the partial line gone
    rc, stdout, _ = _run(capsys, *args)
    assert rc == 0 and "wrote 0 rows" in stdout and "5 already there" in stdout
    rc, stdout, _ = _run(capsys, *args, "--force")
    assert rc == 0 and "wrote 5 rows" in stdout and len(_lines(out)) == 5


def test_unreadable_images_are_rows_with_an_error(scenes, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes((scenes / "images" / "000000.png").read_bytes())
    (images / "b.png").write_text("not an image")
    (images / "c.jpg").write_bytes(b"")
    (images / "notes.txt").write_text("not listed: not an image suffix")
    out = tmp_path / "p.jsonl"
    rc, stdout, err = _run(capsys, "--images", str(images), "--task", "ocr", "--out", str(out))
    assert rc == 0 and "(2 failed)" in stdout
    rows = {r["id"]: r for r in _lines(out)}
    assert set(rows) == {"a.png", "b.png", "c.jpg"} and "error" not in rows["a.png"]
    assert "is not an image" in rows["b.png"]["error"] and "is empty" in rows["c.jpg"]["error"]
    warnings = [line for line in err.splitlines() if line.startswith("vlmkit: warning:")]
    assert sorted(warnings) == ["vlmkit: warning: 1 row failed: <image> is not an image or is in an unsupported format",
                                "vlmkit: warning: 1 row failed: image file <image> is empty"]


def test_manifest_rows_with_their_own_prompts(scenes, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    rows = [json.loads(line) for line in (scenes / "manifest.jsonl").read_text().splitlines()][:4]
    manifest.write_text("".join(json.dumps({"image": str(scenes / r["image"]), "prefix": r["prefix"]}) + "\n"
                                for r in rows + rows[:1]))  # the last row repeats the first
    out = tmp_path / "p.jsonl"
    rc, _, err = _run(capsys, "--data", str(manifest), "--max-new-tokens", "8", "--out", str(out))
    assert rc == 0, err
    got = _lines(out)
    assert [g["prompt"] for g in got] == [r["prefix"] for r in rows]  # the repeat is predicted once
    assert len({g["id"] for g in got}) == 4


def test_a_batch_that_fails_on_one_row_fails_that_row_only(tmp_path, rng_image):
    class Pipe:  # generate_batch raises when the batch holds the over-long prompt
        def generate_batch(self, prompts, images, sampling=None):
            if "long" in prompts:
                raise PromptTooLongError("prompt does not fit")
            from vlmkit.generation import GenerationResult

            return [GenerationResult(f"echo {p}", [1], "eos", {}) for p in prompts]

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        rng_image(8, 8, seed=i).save(paths[-1])
    rows = [{"id": str(i), "image": str(p), "prompt": "long" if i == 1 else f"p{i}"} for i, p in enumerate(paths)]
    summary = predict(Pipe(), rows, tmp_path / "o.jsonl", batch_size=3)
    got = _lines(tmp_path / "o.jsonl")
    assert [g.get("text") for g in got] == ["echo p0", None, "echo p2"]
    assert got[1]["error"] == "prompt does not fit" and summary.failed == {"prompt does not fit": 1}


@pytest.mark.parametrize("case", ["empty_folder", "out_is_folder", "foreign_out", "other_task", "raw_no_prompt",
                                  "missing_folder", "bad_manifest", "detect_no_objects"])
def test_bad_input_is_one_line(case, tmp_path, capsys, scenes):
    images, out = str(scenes / "images"), tmp_path / "p.jsonl"
    (tmp_path / "empty").mkdir()
    args = {"empty_folder": ["--images", str(tmp_path / "empty"), "--task", "ocr", "--out", str(out)],
            "out_is_folder": ["--images", images, "--task", "ocr", "--out", str(tmp_path)],
            "foreign_out": ["--images", images, "--task", "ocr", "--out", str(tmp_path / "notes.txt")],
            "other_task": ["--images", images, "--task", "ocr", "--out", str(tmp_path / "caption.jsonl")],
            "raw_no_prompt": ["--images", images, "--out", str(out)],
            "missing_folder": ["--images", str(tmp_path / "nope"), "--task", "ocr", "--out", str(out)],
            "bad_manifest": ["--data", str(tmp_path / "notes.txt"), "--out", str(out)],
            "detect_no_objects": ["--images", images, "--task", "detect", "--out", str(out)]}[case]
    (tmp_path / "notes.txt").write_text("my notes, not predictions\n")
    (tmp_path / "caption.jsonl").write_text(json.dumps({"id": "000000.png", "task": "caption"}) + "\n")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    rc, _, err = _run(capsys, *args)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmkit: error: "), err
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing written or cut


def test_progress_bar_on_a_terminal(scenes, tmp_path, capsys, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for quiet, shown in ((False, True), (True, False)):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        flags = ["--quiet"] if quiet else []
        rc = main(["predict", "--images", str(scenes / "images"), "--task", "ocr", "--max-new-tokens", "4",
                   "--batch-size", "2", "--out", str(tmp_path / f"{quiet}.jsonl"), *flags])
        assert rc == 0
        assert ("5/5" in term.getvalue()) is shown, term.getvalue()


@pytest.mark.slow  # a subprocess (imports, model load) plus 16 rows: ~20 s on a shared CPU
def test_a_killed_run_resumes(scenes, tmp_path, capsys):
    """SIGKILL a real run once it has written something; the next run completes the output, each
    row exactly once, every line whole."""
    import os
    import signal
    import subprocess
    import sys
    import time

    images = tmp_path / "imgs"
    images.mkdir()
    sources = sorted((scenes / "images").iterdir())
    for i in range(16):
        (images / f"{i:02d}.png").write_bytes(sources[i % len(sources)].read_bytes())
    out = tmp_path / "p.jsonl"
    args = ["predict", "--images", str(images), "--task", "caption", "--batch-size", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "vlmkit", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (out.exists() and out.stat().st_size):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(args) == 0
    ids = [r["id"] for r in _lines(out)]
    assert sorted(ids) == [f"{i:02d}.png" for i in range(16)]
