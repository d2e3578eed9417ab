"""`vlmkit generate --video` for the families whose processor takes videos (Qwen2-VL, Qwen2.5-VL):
the sampled frames reach the model as one video (temporal patches, `<|video_pad|>` tokens), and the
CLI's greedy tokens are transformers' on the same batch; a video source without frames is one line,
exit 2."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.parity import hf_builders as hb
from vlmkit.cli import main
from vlmkit.data.conversation import chat_turns
from vlmkit.data.video import frame_count, sample_video
from vlmkit.pipeline import load
from vlmkit.weights.create import create_checkpoint

tf = pytest.importorskip("transformers")
HF_CLASS = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


def _source(tmp_path, kind: str):
    """5 random 40 x 70 frames: a folder of PNGs (no rate) or a GIF at 4 fps (250 ms a frame)."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)) for _ in range(5)]
    if kind == "gif":
        frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
        return tmp_path / "clip.gif"
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        frame.save(tmp_path / "frames" / f"f{i}.png")
    return tmp_path / "frames"


@pytest.mark.parametrize("family, kind", [("qwen2_vl", "folder"), ("qwen2_5_vl", "folder"), ("qwen2_5_vl", "gif")])
def test_generate_video_matches_transformers(family, kind, tmp_path, capsys):
    folder = create_checkpoint(tmp_path / family, "debug", family=family)
    source = _source(tmp_path, kind)
    rc = main(["generate", "--model", str(folder), "--video", str(source), "--max-frames", "5", "--chat",
               "what happens?", "--max-new-tokens", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["num_images"] == 1  # one video, not five images

    pipe = load(folder, dtype="float32")
    clip = sample_video(source, max_frames=frame_count(5, pipe.processor))  # 5 rounds to 4: frames 0, 2, 4
    assert len(clip.frames) == 3 and clip.fps == (2.0 if kind == "gif" else None)
    batch = pipe.processor.chat(pipe.chat_template, chat_turns(["what happens?"], 1), [clip])
    assert batch["video_grid_thw"][0, 0] == 2 and "pixel_values" not in batch  # 3 frames -> 2 temporal patches
    hf = hb.load_strictly(getattr(tf, HF_CLASS[family]), folder)
    types = (batch["input_ids"] == hf.config.video_token_id).long() * 2
    if family == "qwen2_vl":
        del batch["second_per_grid_ts"]  # Qwen2-VL's generate takes none
    with torch.no_grad():
        ref = hf.generate(**batch, mm_token_type_ids=types, max_new_tokens=4, do_sample=False)
    ref = ref[0, batch["input_ids"].shape[1]:].tolist()
    eos = hf.generation_config.eos_token_id
    assert out["token_ids"] == (ref[: ref.index(eos)] if eos in ref else ref) and out["token_ids"]


def test_video_without_frames_is_one_line(tmp_path, capsys):
    folder = create_checkpoint(tmp_path / "q", "debug", family="qwen2_5_vl")
    (tmp_path / "empty").mkdir()
    rc = main(["generate", "--model", str(folder), "--video", str(tmp_path / "empty"), "--chat", "what?"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("vlmkit: error:") and "no image frames" in err[0]
