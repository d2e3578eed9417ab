"""Training on video rows (Qwen2-VL, Qwen2.5-VL) against transformers, fp32 on CPU.

A manifest with a video row (5 frames -> 3 temporal patches, an image beside it) and an image row,
read by `ChatJsonlDataset` and collated by `ChatCollator` into one right-padded batch
(pixel_values_videos, video_grid_thw, second_per_grid_ts next to the image inputs). vlmkit's
training loss (`SuffixLMLoss`, summed; divided here by the number of targets) and its gradients
equal transformers' `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`
forward with `labels` (mean over targets) on the same weights: a folder made by `vlmkit create`,
loaded by both. Gradients are compared in the hub layout: each side writes its gradients as if
they were weights (vlmkit's save_hf, transformers' save_pretrained) and the files are compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.cli import main
from vlmkit.data.chat_template import load_chat_template
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.common.mrope import IMAGE, TEXT, VIDEO
from vlmkit.models.registry import family_of
from vlmkit.training.chat import ChatCollator, ChatJsonlDataset
from vlmkit.training.trainer import SuffixLMLoss
from vlmkit.weights.hf import load_hf, save_hf

tf = pytest.importorskip("transformers")

HF_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


def _png(path: Path, h: int, w: int, seed: int) -> str:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path.name


def video_rows(folder: Path) -> Path:
    """rows.jsonl: a video (5 frames of 40 x 60, fps 1) after an image, and a row with one image."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = [_png(folder / f"f{k}.png", 40, 60, k) for k in range(5)]
    rows = [{"images": [_png(folder / "a.png", 50, 50, 10)], "videos": [{"frames": frames, "fps": 1}],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "video"},
                                                       {"type": "text", "text": "what happens after this"}]},
                          {"role": "assistant", "content": "the cat jumps"}]},
            {"images": [_png(folder / "b.png", 30, 70, 11)],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and here"}]},
                          {"role": "assistant", "content": "a dog"}]}]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rows.jsonl"


@pytest.fixture(scope="module", params=list(HF_CLASSES))
def setup(request, tmp_path_factory):
    """(family, model folder, the collated batch of the two rows)."""
    root = tmp_path_factory.mktemp(request.param)
    assert main(["create", "--family", request.param, "--preset", "debug", str(root / "model")]) == 0
    model = load_hf(root / "model", dtype="float32")
    processor = family_of(model).build_processor(root / "model", Tokenizer.from_folder(root / "model"), model.cfg)
    collate = ChatCollator(processor, load_chat_template(root / "model"))
    data = ChatJsonlDataset(video_rows(root / "rows"), collator=collate, max_len=2000)
    return request.param, root / "model", collate([data[0], data[1]])


def _grads_as_weights(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.data = p.grad if p.grad is not None else torch.zeros_like(p)


def test_video_batch_loss_and_grads_equal_transformers(setup, tmp_path):
    family, folder, batch = setup
    assert batch["video_grid_thw"].tolist() == [[3, 4, 6]] and batch["image_grid_thw"].shape == (2, 3)
    ours = SuffixLMLoss(load_hf(folder, dtype="float32"))
    hf = getattr(tf, HF_CLASSES[family]).from_pretrained(folder, dtype=torch.float32)
    cfg = ours.model.cfg
    ids = batch["input_ids"]
    types = torch.where(ids == cfg.image_token_id, IMAGE, torch.where(ids == cfg.video_token_id, VIDEO, TEXT))
    types = types * batch["attention_mask"]
    assert int((types == VIDEO).sum()) == 3 * 4 * 6 // 4  # t h w / merge^2 video tokens
    n = int((batch["labels"][:, 1:] != -100).sum())
    loss = ours(**batch) / n
    loss.backward()
    inputs = {k: v for k, v in batch.items() if family == "qwen2_5_vl" or k != "second_per_grid_ts"}
    ref = hf(**inputs, mm_token_type_ids=types).loss
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5, (loss.item(), ref.item())
    _grads_as_weights(ours.model)
    _grads_as_weights(hf)
    save_hf(ours.model, tmp_path / "ours")
    hf.save_pretrained(tmp_path / "hf")
    got, expected = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert got.keys() == expected.keys()
    for key, g in got.items():
        torch.testing.assert_close(g, expected[key], atol=1e-5, rtol=1e-4, msg=key)
    assert any(k.startswith("visual.") and got[k].abs().sum() > 0 for k in got)  # the tower got gradients


def test_positions_equal_get_rope_index(setup):
    """The batch's M-RoPE positions [3, B, T] (temporal axis per temporal patch; Qwen2.5-VL's scaled by
    tokens_per_second * second_per_grid_ts, 2 s per grid step at fps 1) equal transformers' get_rope_index."""
    family, folder, batch = setup
    torch.testing.assert_close(batch["second_per_grid_ts"], torch.tensor([2.0]))
    model = load_hf(folder, dtype="float32")
    hf = getattr(tf, HF_CLASSES[family]).from_pretrained(folder, dtype=torch.float32)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    types = torch.where(ids == model.cfg.image_token_id, IMAGE,
                        torch.where(ids == model.cfg.video_token_id, VIDEO, TEXT))
    seconds = {"second_per_grid_ts": batch["second_per_grid_ts"]} if family == "qwen2_5_vl" else {}
    ref, _ = hf.model.get_rope_index(ids, types * mask, batch["image_grid_thw"], batch["video_grid_thw"],
                                     attention_mask=mask, **seconds)
    with torch.no_grad():
        inputs, _ = model.inputs(ids, mask, batch["pixel_values"], batch["image_grid_thw"],
                                 pixel_values_videos=batch["pixel_values_videos"],
                                 video_grid_thw=batch["video_grid_thw"], second_per_grid_ts=batch["second_per_grid_ts"])
    valid = mask.bool()
    assert torch.equal(inputs.positions[:, valid], ref[:, valid])
    video_t = inputs.positions[0, 0][ids[0] == model.cfg.video_token_id].unique().tolist()
    assert len(video_t) == 3 and (video_t[1] - video_t[0]) == (4 if family == "qwen2_5_vl" else 1)
