"""`vlmkit train finetune` on video rows for Qwen2-VL / Qwen2.5-VL (folders made by `vlmkit create`):
a manifest mixing video rows (frame lists, a folder of frames, an animated GIF) and image rows trains and its
loss falls, token-budget batches count video tokens, and bad videos (zero frames, frames of different
sizes, a missing frame file, a video for a family without videos) are one line naming the row, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.test_train_families import losses
from vlmkit.cli import main
from vlmkit.data.chat_template import load_chat_template
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.registry import family_of
from vlmkit.training.chat import ChatCollator, ChatJsonlDataset
from vlmkit.training.cli import run_train
from vlmkit.weights.hf import load_hf

WORDS = ["the cat jumps", "a dog runs away", "nothing moves", "two birds fly"]


def _frame(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _video_row(i: int, video) -> dict:
    user = [{"type": "video"}, {"type": "text", "text": "what happens"}]
    return {"videos": [video], "messages": [{"role": "user", "content": user},
                                            {"role": "assistant", "content": WORDS[i % len(WORDS)]}]}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """6 rows: videos of 2-5 frames and different sizes (as frame lists, {frames, fps}, a folder, a GIF),
    one row with an image and a video, one image row."""
    d = tmp_path_factory.mktemp("video_rows")
    lists = []
    for v, (n, h, w) in enumerate([(4, 40, 60), (3, 56, 30), (5, 28, 28), (2, 50, 70)]):
        lists.append([f"v{v}_{k}.png" for k in range(n)])
        for k, name in enumerate(lists[-1]):
            _frame(h, w, 10 * v + k).save(d / name)
    (d / "clip").mkdir()
    for k in range(3):
        _frame(40, 40, 50 + k).save(d / "clip" / f"{k}.png")
    gif = [_frame(30, 60, 60 + k) for k in range(4)]
    gif[0].save(d / "clip.gif", save_all=True, append_images=gif[1:], duration=500, loop=0)
    _frame(40, 56, 70).save(d / "still.png")
    rows = [_video_row(0, lists[0]), _video_row(1, {"frames": lists[1], "fps": 2}), _video_row(2, "clip"),
            _video_row(3, "clip.gif"), _video_row(4, lists[2])]
    both = _video_row(5, lists[3])
    both["images"] = ["still.png"]
    both["messages"][0]["content"].insert(0, {"type": "image"})
    rows += [both, {"images": ["still.png"], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this"}]},
        {"role": "assistant", "content": WORDS[1]}]}]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "rows.jsonl"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("video_models")
    for family in ("qwen2_vl", "qwen2_5_vl"):
        assert main(["create", "--family", family, "--preset", "debug", str(root / family)]) == 0
    return {f: root / f for f in ("qwen2_vl", "qwen2_5_vl")}


def train(model: Path, data: Path, out: Path, *extra: str) -> int:
    return run_train(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "8",
                      "--data.batch_size", "3", "--optim.lr", "3e-3", "--optim.warmup_steps", "1",
                      "--precision", "fp32", "--ckpt_every", "0", "--data.max_length", "600", *extra])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_finetune_on_videos_loss_falls(family, folders, rows, tmp_path):
    out = tmp_path / "run"
    assert train(folders[family], rows, out) == 0
    curve = losses(out)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.5, curve
    assert (out / "export" / "config.json").is_file()


def test_token_budget_counts_video_tokens(folders, rows, tmp_path):
    """A row's measured length is its whole collated sequence, the `<|video_pad|>` tokens included; a
    budget run cuts batches by it."""
    folder = folders["qwen2_vl"]
    model = load_hf(folder, dtype="float32")
    processor = family_of(model).build_processor(folder, Tokenizer.from_folder(folder), model.cfg)
    collate = ChatCollator(processor, load_chat_template(folder))
    data = ChatJsonlDataset(rows, collator=collate, budget=400)
    video_id = processor.tokenizer.token_id("<|video_pad|>")
    for i, n in enumerate(data.lengths):
        ids = collate([data[i]])["input_ids"][0]
        assert n == len(ids)
        assert (int((ids == video_id).sum()) > 0) == ("videos" in data.rows[i])
    assert train(folder, rows, tmp_path / "budget", "--steps", "3", "--data.max_tokens_per_batch", "200") == 0
    assert len(losses(tmp_path / "budget")) == 3


def _bad(rows: Path, tmp_path: Path, bad: dict) -> Path:
    """A copy of the manifest with `bad` as its second row (the files it names written beside)."""
    lines = rows.read_text().splitlines()
    out = tmp_path / "rows.jsonl"
    out.write_text("\n".join([lines[0], json.dumps(bad), *lines[1:]]) + "\n")
    return out


def _copy_files(rows: Path, tmp_path: Path) -> None:
    for path in rows.parent.iterdir():
        if path.is_file() and path.suffix in (".png", ".gif"):
            (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "clip").mkdir(exist_ok=True)
    for path in (rows.parent / "clip").iterdir():
        (tmp_path / "clip" / path.name).write_bytes(path.read_bytes())


@pytest.mark.parametrize("video, message", [
    ([], "rows.jsonl:2 video 0 has zero frames"),
    (["v0_0.png", "v1_0.png"], "rows.jsonl:2 cannot be processed: a video's frames differ in size: 40 x 60 and "
                               "56 x 30 pixels"),
    (["v0_0.png", "gone.png"], "rows.jsonl:2 names image {root}/gone.png, which does not exist"),
    ("empty", "rows.jsonl:2 names video {root}/empty, which cannot be sampled (no image frames"),
])
def test_bad_video_rows_are_one_line(video, message, folders, rows, tmp_path, capsys):
    _copy_files(rows, tmp_path)
    (tmp_path / "empty").mkdir()
    manifest = _bad(rows, tmp_path, _video_row(9, video))
    rc = train(folders["qwen2_vl"], manifest, tmp_path / "out", "--steps", "1")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert message.format(root=tmp_path) in err, err


def test_video_rows_for_a_family_without_videos(rows, tmp_path, capsys):
    """A Pixtral (LLaVA) folder's processor takes images only: the video row is refused by line."""
    assert main(["create", "--family", "llava", "--preset", "pixtral-debug", str(tmp_path / "pixtral")]) == 0
    capsys.readouterr()
    rc = train(tmp_path / "pixtral", rows, tmp_path / "out", "--steps", "1")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "rows.jsonl:1 has videos, but the PixtralProcessor takes images only" in err, err
