"""Frames per video (`vlmkit.data.video.frame_count`) against transformers' own rounding.

transformers' `Qwen2VLVideoProcessor` imports torchvision, which cannot be installed here, so its
`sample_frames` method is taken from the installed source file as written (the function alone,
compiled with `math` and a `torch.arange` that records the count it is asked for: its float step
`total / num_frames` can give one index more, 15 for num_frames=14 of 300 frames) and called with
the processor's class defaults: the number of frames it asks for a request of N (`num_frames=N`) from a long clip is the count `frame_count`
gives, for every N; N = 1 (0 frames) fails there and is a one-line ConfigError here. With a rate
(`fps=F`, `max_frames=N`) its count is `fps_frame_count`'s for clips of 1 .. 300 frames at 10, 24
and 30 fps; a clip shorter than one temporal patch (0 frames there: a division by zero) gives its
frames here.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlmkit.data.processors.qwen2_vl import Qwen2VLProcessor
from vlmkit.data.video import MIN_FPS_FRAMES, fps_frame_count, frame_count
from vlmkit.errors import ConfigError

tf = pytest.importorskip("transformers")
SOURCE = Path(tf.__file__).parent / "models" / "qwen2_vl" / "video_processing_qwen2_vl.py"


class _Arange:
    """Stand-in for `torch.arange(0, total, total / num_frames).int()`: keeps num_frames as `.n`."""

    def __init__(self, start, end, step=1):
        self.n = round((end - start) / step)

    def int(self):
        return self


def _sample_frames():
    """transformers' Qwen2VLVideoProcessor.sample_frames, compiled from its source file, and the class
    defaults it reads from `self`."""
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "sample_frames")
    fn.args.args[1].annotation = None  # VideoMetadata is not imported here
    scope = {"math": math, "torch": SimpleNamespace(arange=_Arange)}
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
        expected = sample_frames(me, clip, num_frames=n).n
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


def test_fps_frame_count_is_transformers_fps_count():
    sample_frames, me = _sample_frames()
    assert me.min_frames == MIN_FPS_FRAMES
    m = me.temporal_patch_size
    checked = 0
    for total in (1, 2, 3, 5, 8, 10, 37, 100, 300):
        for rate in (10.0, 24.0, 30.0):
            for fps in (0.5, 1.0, 2.0, 4.0, 13.0):
                for most in (16, 64):
                    ours = fps_frame_count(total, rate, fps, most, m)
                    try:
                        clip = SimpleNamespace(total_num_frames=total, fps=rate)
                        expected = sample_frames(me, clip, fps=fps, max_frames=most).n
                    except ZeroDivisionError:  # fewer frames than one temporal patch
                        assert total < m and ours == total
                        continue
                    assert ours == expected, (total, rate, fps, most)
                    checked += 1
    assert checked > 200


def test_frames_are_not_rounded_without_temporal_patches():
    assert [frame_count(n) for n in (1, 3, 5, 16)] == [1, 3, 5, 16]
