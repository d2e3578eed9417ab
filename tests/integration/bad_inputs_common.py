"""Shared pieces of the bad-input corpus (tests/integration/test_bad_inputs_*.py).

Every case runs `vlmkit.cli.main` in-process and checks the contract of the CLI's error boundary:
exit code 2, exactly one stderr line starting `vlmkit: error:` that names the cause, no traceback,
and no file created, changed or removed anywhere under the case's folder or the shared model.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.cli import main


@pytest.fixture(scope="module")
def debug_model(tmp_path_factory) -> Path:
    """A tiny random PaliGemma checkpoint folder, made once per test module; never modified."""
    out = tmp_path_factory.mktemp("model") / "debug-model"
    assert main(["create", str(out)]) == 0
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "ok.png"
    Image.new("RGB", (16, 12), (200, 30, 30)).save(path)
    return path


def snapshot(*roots: Path, folders: bool = True) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file (and, with `folders`, folder: size 0, so a temp entry
    made and removed again shows as a changed mtime) under `roots`."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            if folders or not p.is_dir():
                st = p.lstat()
                out[str(p)] = (0 if p.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, edit) -> None:
    """Rewrite the JSON file at `path` with `edit(obj)` (in place) or its return value."""
    obj = json.loads(path.read_text())
    new = edit(obj)
    path.write_text(json.dumps(obj if new is None else new))


def png_header(width: int, height: int) -> bytes:
    """A PNG with an IHDR declaring width x height and one empty IDAT (a decompression bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def run_bad(capsys, argv: list[str], cause: str, *watch: Path, folders: bool = True) -> str:
    """Run the CLI on `argv`; assert the one-line error contract with `cause` in the message and that
    nothing under `watch` changed (see `snapshot` for `folders`). Returns the message."""
    before = snapshot(*watch, folders=folders)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "Traceback" not in captured.out, err
    lines = err.strip("\n").split("\n")
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("vlmkit: error:"), err
    assert cause.lower() in lines[0].lower(), (cause, lines[0])
    assert snapshot(*watch, folders=folders) == before, "files changed under " + ", ".join(map(str, watch))
    return lines[0]
