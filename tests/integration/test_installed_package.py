"""The bundled model ships inside the package: build a regular (non-editable) install of this
source tree into a temporary folder and load `vlmkit-shapes-tiny` by name from there.

The editable install the tests run under would find the model in src/ even if package-data were
misdeclared; a `pip install --target` copies only what the wheel holds, so a missing asset shows up
here. Only the files the build needs are copied (pyproject, README, src), so nothing of the
checkout (runs/, .venv) leaks in and no build/ folder is written into it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkit.weights.registry import bundled_models

ROOT = Path(__file__).resolve().parents[2]
NAME = "vlmkit-shapes-tiny"
pytestmark = pytest.mark.skipif(NAME not in bundled_models(), reason=f"{NAME} is not bundled yet")

SCRIPT = f"""
import json, vlmkit
from vlmkit.weights.registry import resolve_model
folder = resolve_model(None)
pipe = vlmkit.load("{NAME}", dtype="float32")
out = pipe.generate("ocr", "{{image}}")
print(json.dumps({{"module": vlmkit.__file__, "folder": str(folder), "text": out.text}}))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A non-editable install of this tree (no dependencies: they are already in this venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src_tree"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(target), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def test_bundled_model_loads_by_name_from_installed_package(site, tmp_path):
    from PIL import Image, ImageDraw

    image = tmp_path / "word.png"
    img = Image.new("RGB", (64, 64), (225, 225, 225))
    ImageDraw.Draw(img).text((8, 26), "CAT", fill=(20, 20, 20))
    img.save(image)
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.replace("{image}", str(image))],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # The package imported is the installed copy, and the model folder is inside it.
    assert Path(got["module"]).resolve().is_relative_to(site.resolve())
    assert Path(got["folder"]).resolve().is_relative_to(site.resolve())
    assert Path(got["folder"]).name == NAME
    assert isinstance(got["text"], str)
