"""Every `vlmkit` command and Python snippet the README shows runs (paths to a real checkpoint are
replaced by a random debug checkpoint; the images they name are created)."""

import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
REAL = "/path/to/paligemma-3b-pt-224"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def _commands():
    lines = [line.strip() for block in _blocks("bash")[2:] for line in block.splitlines()]
    return [line for line in lines if line.startswith("vlmkit ")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    assert main(["create", str(d / "runs/debug-model")]) == 0
    for name in ("cat.jpg", "a.jpg", "b.jpg"):
        Image.new("RGB", (64, 48), "orange").save(d / name)
    (d / "frames").mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 20, 20)).save(d / "frames" / f"{i}.png")
    return d


def _run(line, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    argv = shlex.split(line.replace(REAL, "runs/debug-model"))[1:]
    assert main(argv) == 0, line


FAST = [c for c in _commands() if not c.startswith("vlmkit experiment")]
SLOW = [c for c in _commands() if c.startswith("vlmkit experiment")]


def test_readme_shows_commands():
    assert len(FAST) >= 8 and SLOW


def test_readme_commands_run_in_order(workdir, monkeypatch, capsys):
    for line in FAST:  # in order: later commands use what earlier ones wrote
        _run(line, workdir, monkeypatch)
    assert (workdir / "out.png").is_file() and (workdir / "runs/demo/index.html").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("line", SLOW)
def test_readme_slow_commands(line, workdir, monkeypatch):
    _run(line, workdir, monkeypatch)


def test_readme_python_snippet(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    (snippet,) = _blocks("python")
    exec(compile(snippet.replace(REAL, "runs/debug-model"), "README.md", "exec"), {})


def test_readme_benchmark_block_is_rendered_from_committed_json():
    """The Performance block is `benchmarks/render_table.py`'s output on the committed results it
    names, so every number in it has its JSON (machine, date, command) in benchmarks/results/."""
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- bench:begin -->\n(.*?)\n<!-- bench:end -->", text, re.S).group(1)
    files = re.findall(r"Measured: `(benchmarks/results/[^`]+\.json)`", block)
    assert files, "the block names no committed result"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_table.py"), *files],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert block.strip() == out


NAMES = {"color": "colour", "exist": "exists"}  # the README spells subtasks in words


def test_readme_bundled_model_table_matches_committed_eval():
    """The bundled model's eval table shows the numbers of `docs/results/bundled-model/*.json`,
    and its size is the shipped file's."""
    import json

    from vlmkit.weights.safetensors_io import SafetensorsReader

    text = (ROOT / "README.md").read_text()
    res = {t: json.loads((ROOT / f"docs/results/bundled-model/eval-{t}.json").read_text())
           for t in ("vqa", "detect", "ocr", "caption")}
    row = {t: next(line for line in text.splitlines() if line.startswith(f"| {name} ("))
           for t, name in (("vqa", "VQA"), ("detect", "detect"), ("ocr", "OCR"), ("caption", "caption"))}
    assert f"({res['vqa']['num_examples']:,} questions)" in row["vqa"]
    assert f"| {100 * res['vqa']['metrics']['exact_match']:.1f}% (" in row["vqa"]
    for kind, acc in res["vqa"]["by_subtask"].items():
        assert f"{NAMES.get(kind, kind)} {100 * acc['score']:.1f}%" in row["vqa"], kind
    assert f"| {res['detect']['metrics']['map_50']:.3f} (mAP@[.5:.95] {res['detect']['metrics']['map_50_95']:.3f})" in row["detect"]
    assert f"| {100 * res['ocr']['metrics']['exact_match']:.0f}% (CER {res['ocr']['metrics']['cer']:.3f})" in row["ocr"]
    assert f"| {res['caption']['metrics']['cider_d']:.2f} |" in row["caption"]
    folder = ROOT / "src/vlmkit/assets/models/vlmkit-shapes-tiny"
    reader = SafetensorsReader(folder)
    params = sum(int(torch_numel(reader.header(k)[0])) for k in reader.keys())
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    assert f"`vlmkit-shapes-tiny` ({params / 1e6:.1f}M parameters, {size_mb:.0f} MB," in text


def torch_numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_readme_serve_command_runs(monkeypatch):
    """The README's `vlmkit serve` line runs through the real command (flags, model loading, app);
    uvicorn is replaced by FastAPI's test client, which sends the README's kind of request."""
    import base64
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    (block,) = _blocks("console")
    (line,) = [line for line in block.splitlines() if line.startswith("vlmkit serve")]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    seen = {}

    def fake_run(app, host, port, log_level):
        seen["port"] = port
        with TestClient(app) as client:
            assert client.get("/health").status_code == 200
            body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "caption en"},
                                                              {"type": "image_url", "image_url": {"url": url}}]}],
                    "max_tokens": 16}
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            seen["text"] = reply.json()["choices"][0]["message"]["content"]

    monkeypatch.setattr("uvicorn.run", fake_run)
    assert main(shlex.split(line)[1:]) == 0
    assert seen["port"] == 8000 and isinstance(seen["text"], str)


def test_readme_openai_snippet_runs_against_a_live_server(workdir, monkeypatch, capsys):
    """The README's `openai` client snippet, run as written against `vlmkit serve`'s app on a free
    port (its URL and image path replaced by the test server's and a real file)."""
    pytest.importorskip("openai")
    import vlmkit
    from tests.integration.test_serving_openai import ServeConfig, serving  # the server fixture's body

    (snippet,) = _blocks("python-openai")
    assert "http://127.0.0.1:8000/v1" in snippet and '"cat.jpg"' in snippet
    Image.new("RGB", (64, 48), "orange").save(workdir / "openai-cat.jpg")
    with serving(vlmkit.load(dtype="float32"), ServeConfig(max_batch=2, max_len=256)) as url:
        code = snippet.replace("http://127.0.0.1:8000/v1", url)
        code = code.replace('"cat.jpg"', repr(str(workdir / "openai-cat.jpg")))
        exec(compile(code, "README.md", "exec"), {})
    caption, boxes = capsys.readouterr().out.splitlines()
    assert caption and boxes.startswith("[")
