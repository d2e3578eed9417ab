"""Video rows in `--data.mixture` sources (Qwen2-VL folders made by `vlmkit create`): the rows of
tests/integration/test_train_video.py train from an image-text source, an interleaved source and an
interleaved tar shard (frames as members) exactly as from the plain manifest (the same losses step by
step and bit-identical weights after), token-budget batches included; a row's measured length counts
its video tokens; `data.video_frames` / `data.video_fps` choose the frames taken from a video source
alike in both; and a video row
where it cannot go (a family without videos, a text-only source, a video source named in a tar
shard) is one line naming the source and the row, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_train_families import losses
from tests.integration.test_train_mixture import _tar
from tests.integration.test_train_video import _frame, folders, rows  # noqa: F401 (fixtures)
from vlmkit.cli import main
from vlmkit.data.chat_template import load_chat_template
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.registry import family_of
from vlmkit.training.chat import ChatCollator, ChatJsonlDataset
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.training.mixture import DocumentChatCollator
from vlmkit.training.mixture_rows import DocumentRows
from vlmkit.weights.hf import load_hf

COMMON = ("--steps", "3", "--data.batch_size", "3", "--optim.lr", "3e-3", "--optim.warmup_steps", "1",
          "--precision", "fp32", "--ckpt_every", "0", "--export", "false", "--data.max_length", "600")


def _train(model: Path, out: Path, *extra: str, data: Path | None = None, mixture: list[dict] | None = None) -> int:
    given = ["--data", str(data)] if data is not None else ["--data.mixture", json.dumps(mixture)]
    return run_train(["finetune", "--model", str(model), "--out", str(out), *given, *COMMON, *extra])


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def _same_run(a: Path, b: Path) -> None:
    assert losses(a) == losses(b) and len(losses(a)) == 3, (losses(a), losses(b))
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _frame_list_rows(rows: Path) -> list[dict]:
    """The manifest's rows whose videos are frame lists (what a tar shard can hold)."""
    chosen = [json.loads(line) for line in rows.read_text().splitlines()]
    return [r for r in chosen if not any(isinstance(v, str) for v in r.get("videos", []))]


def _shard(rows: Path, chosen: list[dict], path: Path) -> Path:
    """`chosen` rows as a tar shard: KEY.json and every image and frame it names as KEY.NAME."""
    members = []
    for i, row in enumerate(chosen):
        frames = [p for v in row.get("videos", []) for p in (v["frames"] if isinstance(v, dict) else v)]
        members.append((f"r{i:02d}.json", json.dumps(row).encode()))
        members += [(f"r{i:02d}.{name}", (rows.parent / name).read_bytes()) for name in row.get("images", []) + frames]
    _tar(path, members)
    return path


@pytest.mark.parametrize("kind", ["image-text", "interleaved"])
def test_a_mixture_source_trains_as_the_plain_manifest(kind, folders, rows, tmp_path):  # noqa: F811
    folder = folders["qwen2_vl"]
    assert _train(folder, tmp_path / "plain", data=rows) == 0
    assert _train(folder, tmp_path / "mix", mixture=[{"source": str(rows), "weight": 1.0, "kind": kind}]) == 0
    _same_run(tmp_path / "plain", tmp_path / "mix")


def test_a_tar_shard_of_video_rows_trains_as_its_manifest(folders, rows, tmp_path):  # noqa: F811
    chosen = _frame_list_rows(rows)
    assert len(chosen) == 5 and sum("videos" in r for r in chosen) == 4
    manifest = rows.parent / "frame_lists.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    shard = _shard(rows, chosen, tmp_path / "clips.tar")
    folder = folders["qwen2_5_vl"]  # fps-scaled temporal positions: {frames, fps} must survive the shard
    assert _train(folder, tmp_path / "plain", data=manifest) == 0
    assert _train(folder, tmp_path / "tar", mixture=[{"source": str(shard), "weight": 1.0, "kind": "interleaved"}]) == 0
    _same_run(tmp_path / "plain", tmp_path / "tar")


def _collators(folder: Path) -> tuple[ChatCollator, DocumentChatCollator]:
    model = load_hf(folder, dtype="float32")
    tok = Tokenizer.from_folder(folder)
    processor = family_of(model).build_processor(folder, tok, model.cfg)
    template = load_chat_template(folder)
    return ChatCollator(processor, template), DocumentChatCollator(processor, template, tok.id_to_token(tok.eos_id))


def test_token_budget_over_a_mixture_counts_video_tokens(folders, rows, tmp_path):  # noqa: F811
    """Interleaved rows measure as the plain manifest's (video tokens included), a budget run over the
    mixture cuts the plain run's batches, and a kill-and-resume of it is bit-identical."""
    folder = folders["qwen2_vl"]
    chat, doc = _collators(folder)
    plain = ChatJsonlDataset(rows, collator=chat, budget=400)
    mixed = DocumentRows(rows, chat=True, length=doc.length, budget=400, processor=doc.processor)
    video_id = chat.processor.tokenizer.token_id("<|video_pad|>")
    assert mixed.lengths == plain.lengths and len(mixed.lengths) == 7
    for i, n in enumerate(mixed.lengths):
        ids = doc([mixed[i]])["input_ids"][0]
        assert n == len(ids) and (int((ids == video_id).sum()) > 0) == ("videos" in mixed.rows[i])
    budget = ("--data.max_tokens_per_batch", "200")
    assert _train(folder, tmp_path / "plain", *budget, data=rows) == 0
    mixture = [{"source": str(rows), "weight": 1.0, "kind": "interleaved"}]
    assert _train(folder, tmp_path / "mix", *budget, mixture=mixture) == 0
    _same_run(tmp_path / "plain", tmp_path / "mix")
    assert _train(folder, tmp_path / "split", *budget, "--stop_after", "2", mixture=mixture) == 0
    assert _train(folder, tmp_path / "split", *budget, "--resume", mixture=mixture) == 0  # the held row re-read
    _same_run(tmp_path / "mix", tmp_path / "split")


def _long_clip(rows: Path) -> Path:
    """long.jsonl: one row with a 10-frame GIF at 10 fps (1 s) and a list of 3 frames."""
    gif = [_frame(30, 40, 80 + k) for k in range(10)]
    gif[0].save(rows.parent / "long.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    user = [{"type": "video"}, {"type": "text", "text": "what happens"}, {"type": "video"}]
    row = {"videos": ["long.gif", ["v0_0.png", "v0_1.png", "v0_2.png"]],
           "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "it moves"}]}
    (rows.parent / "long.jsonl").write_text(json.dumps(row) + "\n")
    return rows.parent / "long.jsonl"


@pytest.mark.parametrize("frames, fps, expected", [
    (16, None, 10), (4, None, 4), (5, None, 4),  # at most N (5 rounds to 4): every 3rd frame for 4
    (16, 2.0, 4), (16, 8.0, 5), (4, 8.0, 4),  # 1 s x fps, >= 4, <= N: 4 -> stride 3; 8 -> stride 2 -> 5
])
def test_frames_taken_from_a_video_source(frames, fps, expected, folders, rows):  # noqa: F811
    """data.video_frames / data.video_fps choose the GIF's frames alike from a manifest and a mixture
    source; the row's list of 3 frames stays whole; the sampled rate is 10 fps over the stride."""
    manifest = _long_clip(rows)
    chat, doc = _collators(folders["qwen2_vl"])
    plain = ChatJsonlDataset(manifest, collator=chat, video_frames=frames, video_fps=fps)[0]["images"]
    mixed = DocumentRows(manifest, chat=True, processor=doc.processor, video_frames=frames, video_fps=fps)[0]["images"]
    assert [len(v.frames) for v in plain] == [len(v.frames) for v in mixed] == [expected, 3]
    assert plain[0].fps == mixed[0].fps == pytest.approx(10 / -(-10 // expected))


def test_frame_flags_train(folders, rows, tmp_path):  # noqa: F811
    manifest = _long_clip(rows)
    assert _train(folders["qwen2_vl"], tmp_path / "n", "--data.video-frames", "4", data=manifest) == 0
    assert _train(folders["qwen2_vl"], tmp_path / "fps", "--data.video-fps", "2", data=manifest) == 0
    assert len(losses(tmp_path / "n")) == len(losses(tmp_path / "fps")) == 3


@pytest.mark.parametrize("flags, message", [
    (("--data.video-frames", "0"), "data.video_frames must be >= 1, got 0"),
    (("--data.video-frames", "1"), "data.video_frames=1 rounds to 0 frames for temporal patches of 2 frames"),
    (("--data.video-fps", "0"), "data.video_fps must be > 0, got 0.0"),
    (("--data.video-fps", "2"), "rows.jsonl:3 names video {root}/clip, which cannot be sampled (cannot sample "
                                "{root}/clip at 2.0 fps: it has no frame rate (a folder of frames, or a file that gives none))"),
])
def test_bad_frame_flags_are_one_line(flags, message, folders, rows, tmp_path, capsys):  # noqa: F811
    rc = _train(folders["qwen2_vl"], tmp_path / "out", *flags, data=rows)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and message.format(root=rows.parent) in err, err


def test_generate_max_frames_rounds_to_the_temporal_patch(folders, rows, capsys):  # noqa: F811
    rc = main(["generate", "--model", str(folders["qwen2_vl"]), "--video", str(rows.parent / "clip.gif"),
               "--max-frames", "1", "--chat", "what?"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--max-frames=1 rounds to 0 frames" in err, err


def _one_line(rc: int, capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vlmkit: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", ["image-text", "interleaved"])
def test_video_rows_for_a_family_without_videos(kind, rows, tmp_path, capsys):  # noqa: F811
    assert main(["create", "--family", "llava", "--preset", "pixtral-debug", str(tmp_path / "pixtral")]) == 0
    capsys.readouterr()
    mixture = [{"source": str(rows), "weight": 1.0, "kind": kind, "name": "clips"}]
    err = _one_line(_train(tmp_path / "pixtral", tmp_path / "out", mixture=mixture), capsys)
    assert f"data.mixture source clips: {rows}:1 has videos, but the PixtralProcessor takes images only" in err


def test_video_rows_for_paligemma(rows, tmp_path, capsys):  # noqa: F811
    """PaliGemma's rows are {image, prefix, suffix}: a row with "videos" is refused by name in any source."""
    pali = rows.parent / "pali.jsonl"
    pali.write_text(json.dumps({"image": "still.png", "prefix": "caption en", "suffix": "a cat",
                                "videos": [["v0_0.png", "v0_1.png"]]}) + "\n")
    mixture = [{"source": str(pali), "weight": 1.0, "name": "pali"}]
    err = _one_line(_train(Path("debug"), tmp_path / "out", mixture=mixture), capsys)
    assert f'data.mixture source pali: {pali}:1 has "videos", but {{image, prefix, suffix}} rows take images' in err


def test_video_rows_in_a_text_source(folders, rows, tmp_path, capsys):  # noqa: F811
    mixture = [{"source": str(rows), "weight": 1.0, "kind": "text", "name": "words"}]
    err = _one_line(_train(folders["qwen2_vl"], tmp_path / "out", mixture=mixture), capsys)
    assert f"data.mixture source words: {rows}:1 has a video; put rows with videos in an image-text or " in err


@pytest.mark.parametrize("video, what", [
    ("clip.gif", "names video 'clip.gif' as video 0; in a tar shard a video is the list of its frames' image members"),
    (["v0_0.png", "v0_9.png"], "names image 'v0_9.png', which is not a member of its sample"),
])
def test_a_bad_video_in_a_tar_shard_is_one_line(video, what, folders, rows, tmp_path, capsys):  # noqa: F811
    row = json.loads(rows.read_text().splitlines()[0]) | {"videos": [video]}
    _tar(tmp_path / "bad.tar", [("r00.json", json.dumps(row).encode()),
                                ("r00.v0_0.png", (rows.parent / "v0_0.png").read_bytes())])
    mixture = [{"source": str(tmp_path / "bad.tar"), "weight": 1.0, "kind": "interleaved", "name": "shard"}]
    err = _one_line(_train(folders["qwen2_vl"], tmp_path / "out", mixture=mixture), capsys)
    assert f"data.mixture source shard: {tmp_path / 'bad.tar'}:r00 {what}" in err, err
