"""`--quantize` / `--group-size` / `--compile` on the CLI, and `vlmkit quantize`: the CLI gives what
the library gives, a quantised folder reloads as it was saved, bad combinations are one line."""

import json

import pytest
from PIL import Image

import vlmkit
from vlmkit.cli import build_parser, main
from vlmkit.generation import SamplingConfig
from vlmkit.tasks.run import run_task
from vlmkit.weights.registry import bundled_models

pytestmark = pytest.mark.skipif("vlmkit-shapes-tiny" not in bundled_models(), reason="no bundled model")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


def _cli_json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("flags,kwargs", [(["--quantize", "int8"], {"quantize": "int8"}),
                                          (["--quantize", "int8-dyn"], {"quantize": "int8-dyn"}),
                                          (["--quantize", "int4", "--group-size", "32"],
                                           {"quantize": "int4", "group_size": 32})])
def test_cli_quantize_equals_library(flags, kwargs, image, capsys):
    out = _cli_json(capsys, ["generate", "--task", "caption", "--image", str(image), "--max-new-tokens", "12",
                             "--json", *flags])
    pipe = vlmkit.load(None, dtype="auto", **kwargs)
    lib = run_task(pipe, "caption", [str(image)], sampling=SamplingConfig(max_new_tokens=12))
    assert out["token_ids"] == lib.json["token_ids"] and out["text"] == lib.json["text"]


def test_quantize_command_writes_a_folder_generate_reads(image, tmp_path, capsys):
    folder = tmp_path / "tiny-int4"
    assert main(["quantize", "--quantize", "int4", "--group-size", "32", "--out", str(folder)]) == 0
    gen = ["generate", "--task", "caption", "--image", str(image), "--max-new-tokens", "12", "--json"]
    saved = _cli_json(capsys, [*gen, "--model", str(folder)])
    in_memory = _cli_json(capsys, [*gen, "--quantize", "int4", "--group-size", "32"])
    assert saved["token_ids"] == in_memory["token_ids"]
    assert main(["quantize", "--quantize", "int8", "--out", str(folder)]) == 2  # not empty, no --force
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["generate", "--quantize", "int8", "--group-size", "32"], "--group-size applies to --quantize int4"),
    (["generate", "--quantize", "int2"], "argument --quantize: invalid choice"),
    (["generate", "--quantize", "int4", "--group-size", "48"], "argument --group-size: invalid choice"),
    (["quantize", "--out", "x"], "--quantize"),
])
def test_bad_speed_flags_are_one_line(argv, message, image, capsys):
    assert main([*argv, "--task", "caption", "--image", str(image)] if argv[0] == "generate" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlmkit: error:") and len(err.splitlines()) == 1 and message in err, err


def test_speed_flags_in_help():
    choices = build_parser()._subparsers._group_actions[0].choices
    for cmd, opts in (("generate", ("--compile", "--quantize", "--group-size")),
                      ("serve", ("--quantize", "--group-size")), ("quantize", ("--quantize", "--out"))):
        text = choices[cmd].format_help()
        assert all(o in text for o in opts), (cmd, text)


def test_compile_without_a_compiler_is_one_stderr_line(image, tmp_path):
    """No C++ compiler on PATH: `--compile` generates eagerly and says so in one stderr line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(vlmkit.__file__).parents[1]
    env = {k: v for k, v in os.environ.items() if k != "CXX"} | {"PATH": str(tmp_path), "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-m", "vlmkit", "generate", "--task", "caption", "--image", str(image),
                        "--max-new-tokens", "4", "--json", "--compile"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["token_ids"]) >= 1
    lines = [ln for ln in r.stderr.splitlines() if "compile" in ln]
    assert len(lines) == 1 and "decoding eagerly" in lines[0] and "C++ compiler" in lines[0], r.stderr


def test_serve_quantize_loads_a_quantised_pipeline(monkeypatch):
    """`vlmkit serve --quantize int4 --group-size 32` serves the quantised model (uvicorn stubbed)."""
    pytest.importorskip("fastapi")
    import uvicorn

    from vlmkit.generation.quant import QuantScheme
    from vlmkit.serving import app as serving_app

    seen = {}
    monkeypatch.setattr(serving_app, "create_app", lambda pipe, cfg: seen.setdefault("pipe", pipe))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["serve", "--quantize", "int4", "--group-size", "32"]) == 0
    assert seen["pipe"].model.quantization == QuantScheme(bits=4, group_size=32)
