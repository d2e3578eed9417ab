"""Frames per video (`vlmkit.data.video.frame_count`) against transformers' own rounding.

transformers' `Qwen2VLVideoProcessor` imports torchvision, which cannot be installed here, so its
`sample_frames` method is taken from the installed source file as written (the function alone,
compiled with `math` and `torch`) and called with the processor's class defaults: the number of
frames it samples for a request of N (`num_frames=N`) from a long clip is the count `frame_count`
gives, for every N; N = 1 (0 frames) fails there and is a one-line ConfigError here.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vlmkit.data.processors.qwen2_vl import Qwen2VLProcessor
from vlmkit.data.video import frame_count
from vlmkit.errors import ConfigError

tf = pytest.importorskip("transformers")
SOURCE = Path(tf.__file__).parent / "models" / "qwen2_vl" / "video_processing_qwen2_vl.py"


def _sample_frames():
    """transformers' Qwen2VLVideoProcessor.sample_frames, compiled from its source file, and the class
    defaults it reads from `self`."""
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "sample_frames")
    fn.args.args[1].annotation = None  # VideoMetadata is not imported here
    scope = {"math": math, "torch": torch}
    exec(compile(ast.Module([fn], type_ignores=[]), str(SOURCE), "exec"), scope)
    defaults = {}
    for node in cls.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    me = SimpleNamespace(num_frames=None, fps=None, **{k: defaults[k] for k in ("temporal_patch_size", "min_frames",
                                                                              "max_frames")})
    return scope["sample_frames"], me


@pytest.fixture(scope="module")
def processor():
    return Qwen2VLProcessor.__new__(Qwen2VLProcessor)  # frame_multiple reads only its config


def test_frame_count_is_transformers_num_frames(processor):
    sample_frames, me = _sample_frames()
    assert me.temporal_patch_size == 2
    processor.config = SimpleNamespace(temporal_patch_size=me.temporal_patch_size)
    clip = SimpleNamespace(total_num_frames=200, fps=30.0)
    for n in range(2, 41):
        expected = len(sample_frames(me, clip, num_frames=n))
        assert frame_count(n, processor) == expected, n
    assert [frame_count(n, processor) for n in (3, 5, 7, 9, 16)] == [4, 4, 8, 8, 16]  # halves round to even
    with pytest.raises(ZeroDivisionError):
        sample_frames(me, clip, num_frames=1)  # rounds to 0 frames there
    with pytest.raises(ConfigError, match=r"^--max-frames=1 rounds to 0 frames for temporal patches of 2 frames"):
        frame_count(1, processor, "--max-frames")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_bad_requests_are_one_line(bad, processor):
    processor.config = SimpleNamespace(temporal_patch_size=2)
    with pytest.raises(ConfigError, match=r"^data.video_frames must be an int >= 1, got"):
        frame_count(bad, processor, "data.video_frames")


def test_frames_are_not_rounded_without_temporal_patches():
    assert [frame_count(n) for n in (1, 3, 5, 16)] == [1, 3, 5, 16]
