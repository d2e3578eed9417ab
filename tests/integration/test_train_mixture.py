"""Training on a data mixture (70% image-text, 30% text-only, plus interleaved documents) with
PaliGemma (the debug preset, its tokenizer trained on the mixture's texts) and LLaVA (a folder made
by `vlmkit create`): loss falls on repeated data, text-only batches leave the vision tower without
a gradient, kill-and-resume is bit-identical (with text-only and interleaved sources as tar shards
too), and a bad mixture or a bad tar sample is one line with exit code 2."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.training.config import apply_overrides
from vlmkit.training.recipes import get_recipe, run

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
STORIES = ["the sun is bright today", "we walk along the river", "a small dog runs fast", "rain falls at night"]
COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 20)]


def _image(path: Path, colour) -> str:
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path.name


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def write_mixture(root: Path) -> Path:
    """image-text (PaLI rows), text-only ({text} and {prefix, suffix}) and interleaved (OBELICS-style)
    sources in `root`, and root/mixture.json: 0.6 / 0.3 / 0.1."""
    names = [_image(root / f"img{i}.png", c) for i, c in enumerate(COLOURS)]
    pairs = [{"image": n, "prefix": "caption en", "suffix": c} for n, c in zip(names, CAPTIONS)]
    text = [{"text": s} for s in STORIES] + [{"prefix": "continue", "suffix": s} for s in STORIES[:2]]
    docs = [{"texts": [CAPTIONS[i], None, "and then", None], "images": [None, names[i], None, names[(i + 1) % 4]]}
            for i in range(4)]
    sources = [{"source": _jsonl(root / "pairs.jsonl", pairs), "weight": 0.6, "kind": "image-text"},
               {"source": _jsonl(root / "text.jsonl", text), "weight": 0.3, "kind": "text"},
               {"source": _jsonl(root / "docs.jsonl", docs), "weight": 0.1, "kind": "interleaved"}]
    (root / "mixture.json").write_text(json.dumps(sources))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mixture(tmp_path_factory.mktemp("mixture"))


def paligemma_config(out: Path, mixture: str, **extra):
    cfg = get_recipe("finetune", smoke=True)  # debug preset, batch 4 x accum 2
    return apply_overrides(cfg, {"out_dir": str(out), "data.mixture": mixture, "steps": "10", "ckpt_every": "0",
                                 "export": "false", "optim.lr": "3e-3", "freeze.vision_tower": "false",
                                 "data.max_length": "400", **extra})


def _checkpoint(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def test_paligemma_mixture_learns_and_resumes_exactly(data, tmp_path):
    mixture = str(data / "mixture.json")
    full = run(paligemma_config(tmp_path / "full", mixture))
    assert len(full.losses) == 10 and all(np.isfinite(full.losses))
    assert np.mean(full.losses[-3:]) < np.mean(full.losses[:3]) - 0.5
    run(paligemma_config(tmp_path / "split", mixture, stop_after="4"))
    resumed = run(paligemma_config(tmp_path / "split", mixture), resume=True)
    assert resumed.losses == full.losses  # exact, step by step
    wa, wb = _checkpoint(tmp_path / "full"), _checkpoint(tmp_path / "split")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.name


def write_tar_mixture(data: Path, root: Path) -> Path:
    """`data`'s mixture with its text-only and interleaved sources as tar shards (a {text} row as
    KEY.txt, the others as KEY.json, a document's images as its members KEY.<place>.png)."""
    text, members = [json.loads(line) for line in (data / "text.jsonl").read_text().splitlines()], []
    for i, row in enumerate(text):
        raw = (f"t{i:02d}.txt", row["text"].encode()) if "text" in row else (f"t{i:02d}.json", json.dumps(row).encode())
        members.append(raw)
    _tar(root / "text.tar", members)
    members = []
    for i, line in enumerate((data / "docs.jsonl").read_text().splitlines()):
        row = json.loads(line)
        names = [None if p is None else f"{j}.png" for j, p in enumerate(row["images"])]
        members.append((f"d{i:02d}.json", json.dumps(row | {"images": names}).encode()))
        members += [(f"d{i:02d}.{n}", (data / p).read_bytes()) for n, p in zip(names, row["images"]) if p]
    _tar(root / "docs.tar", members)
    sources = json.loads((data / "mixture.json").read_text())
    for s in sources:
        tar = root / s["source"].replace(".jsonl", ".tar")
        s["source"] = str(data / s["source"]) if s["kind"] == "image-text" else str(tar)
    (root / "mixture.json").write_text(json.dumps(sources))
    return root / "mixture.json"


def test_tar_sources_train_as_their_manifests_and_resume_exactly(data, tmp_path):
    """Text-only and interleaved sources as tar shards give the manifests' run loss for loss, and
    a kill-and-resume over them is bit-identical."""
    mixture = str(write_tar_mixture(data, tmp_path))
    manifests = run(paligemma_config(tmp_path / "jsonl", str(data / "mixture.json")))
    full = run(paligemma_config(tmp_path / "full", mixture))
    assert full.losses == manifests.losses and len(full.losses) == 10
    run(paligemma_config(tmp_path / "split", mixture, stop_after="4"))
    assert run(paligemma_config(tmp_path / "split", mixture), resume=True).losses == full.losses


def test_a_bad_tar_sample_is_one_line_exit_2(llava_folder, data, tmp_path, capsys):
    mixture = json.loads(write_tar_mixture(data, tmp_path).read_text())
    doc = {"texts": ["a red circle", None], "images": [None, "1.png"]}
    for members, what in (([("d00.json", json.dumps(doc).encode())], "d00 names image '1.png', which is not a member"),
                          ([("d00.json", b'{"texts": [')], "d00 is not valid JSON")):  # fmt: skip
        _tar(tmp_path / "docs.tar", members)
        rc = run_train(["finetune", "--model", str(llava_folder), "--out", str(tmp_path / "out"),
                        "--data.mixture", json.dumps(mixture)])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("vlmkit: error: ") and "\n" not in err and "Traceback" not in err
        assert f"{tmp_path / 'docs.tar'}:{what}" in err, err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_text_only_steps_leave_the_vision_tower_unchanged(data, tmp_path):
    """Text-only batches never run the vision tower: no gradient, so AdamW leaves it (and the
    projector) exactly at its initialisation while the decoder trains."""
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.training.recipes import build_model

    mixture = json.dumps([{"source": str(data / "text.jsonl"), "weight": 1.0, "kind": "text"}])
    cfg = paligemma_config(tmp_path, mixture, steps="3")
    run(cfg)
    torch.manual_seed(cfg.seed)  # as `run` does before building the model
    start = build_model(cfg, None, Tokenizer.from_folder(tmp_path / "tokenizer")).state_dict()
    after = _checkpoint(tmp_path)
    changed = {k.split(".")[0] for k in after if not torch.equal(after[k], start[k])}
    assert changed == {"language_model"}


def test_text_batch_gives_no_vision_gradient():
    """A text-only PaliGemma batch (no image tokens, no pixel_values): the decoder gets gradients,
    the vision tower and projector none."""
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.pipeline import paligemma_processor
    from vlmkit.training.mixture import PrefixLMRows
    from vlmkit.training.trainer import SuffixLMLoss
    from vlmkit.weights.hf import load_hf
    from vlmkit.weights.registry import bundled_models

    folder = bundled_models()["vlmkit-shapes-tiny"]
    model = load_hf(folder, dtype="float32").train()
    processor = paligemma_processor(folder, Tokenizer.from_folder(folder), model.cfg)
    batch = PrefixLMRows(processor)([{"document": ["a red circle"], "images": []},
                                     {"prefix": "caption en", "suffix": "a blue square", "images": []}])
    assert "pixel_values" not in batch and not (batch["input_ids"] == model.cfg.image_token_id).any()
    assert (batch["labels"] != -100).sum() == (batch["token_type_ids"] == 1).sum()
    SuffixLMLoss(model)(**batch).backward()
    params = dict(model.named_parameters())
    assert all(p.grad is None for n, p in params.items() if n.startswith(("vision_tower", "projector")))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items()
               if n.startswith("language_model"))


# ---- LLaVA (a chat family) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    from vlmkit.cli import main

    folder = tmp_path_factory.mktemp("llava") / "llava"
    assert main(["create", "--family", "llava", "--preset", "debug", str(folder)]) == 0
    return folder


def _train_llava(folder: Path, data: Path, out: Path, *extra: str) -> int:
    return run_train(["finetune", "--model", str(folder), "--out", str(out), "--data.mixture",
                      str(data / "mixture.json"), "--steps", "8", "--data.batch_size", "4", "--optim.lr", "3e-3",
                      "--optim.warmup_steps", "1", "--precision", "fp32", "--ckpt_every", "0", "--export", "false",
                      "--data.max_length", "2000", "--eval-data", str(data / "pairs.jsonl"), "--eval_batches", "1",
                      "--eval_every", "4", *extra])


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_llava_mixture_learns_and_resumes_exactly(llava_folder, data, tmp_path):
    assert _train_llava(llava_folder, data, tmp_path / "full") == 0
    curve = _losses(tmp_path / "full")
    assert len(curve) == 8 and all(np.isfinite(curve)) and np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.3
    assert "eval_loss" in (tmp_path / "full" / "metrics.jsonl").read_text()  # image-text eval rows, family collate
    assert _train_llava(llava_folder, data, tmp_path / "split", "--stop_after", "3") == 0
    assert _train_llava(llava_folder, data, tmp_path / "split", "--resume") == 0
    assert _losses(tmp_path / "split") == curve
    wa, wb = _checkpoint(tmp_path / "full"), _checkpoint(tmp_path / "split")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def created(tmp_path_factory, llava_folder):
    """family -> a `vlmkit create --family F --preset debug` folder."""
    from vlmkit.cli import main

    def make(family: str) -> Path:
        if family == "llava":
            return llava_folder
        folder = tmp_path_factory.mktemp(family) / family
        assert main(["create", "--family", family, "--preset", "debug", str(folder)]) == 0
        return folder

    return make


@pytest.mark.parametrize("family", ["llava", "idefics3", "qwen2_vl"])
def test_document_layout(created, data, family):
    """An interleaved document: each image where it is in the text, written as the chat template
    writes an image (Qwen2-VL: <|vision_start|> <|image_pad|>... <|vision_end|>) and expanded by the
    family's processor; labels on the text pieces and <eos> only. A raw text row trains every
    token but <bos>."""
    from vlmkit.data.chat_template import load_chat_template
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.models.registry import get_family
    from vlmkit.training.mixture import DocumentChatCollator
    from vlmkit.weights.hf import load_hf

    folder = created(family)
    model, tok = load_hf(folder), Tokenizer.from_folder(folder)
    processor = get_family(family).build_processor(folder, tok, model.cfg)
    eos = tok.id_to_token(tok.eos_id)
    collate = DocumentChatCollator(processor, load_chat_template(folder), eos)
    if family == "qwen2_vl":
        assert collate.image_markup == "<|vision_start|><|image_pad|><|vision_end|>"
    images = [Image.open(data / "img0.png"), Image.open(data / "img1.png")]
    batch = collate([{"document": ["a red circle", None, "and then", None], "images": images},
                     {"document": ["a blue square"], "images": []}])
    ids, labels = batch["input_ids"], batch["labels"]
    image = ids[0] == model.cfg.image_token_id
    first = int(image.nonzero()[0])
    assert image.any() and (labels[0][image] == -100).all()
    before = tok.decode(ids[0, :first].tolist(), skip_special_tokens=False)
    assert "a red circle" in before and "and then" not in before  # the first image sits after the first text
    trained = tok.decode(ids[0][labels[0] != -100].tolist(), skip_special_tokens=False)
    assert trained.replace("\n", "") == "a red circleand then" + eos
    n = int(batch["attention_mask"][1].sum())
    start = int(ids[1, 0] == tok.bos_id)
    assert ids[1, n - 1] == tok.eos_id and (labels[1, :start] == -100).all()
    assert torch.equal(labels[1, start:n], ids[1, start:n])


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixture,match", [
    ('[{"source": "pairs.jsonl", "weight": 1, "kind": "audio"}]', "source 0 (pairs.jsonl): unknown kind 'audio'"),
    ('[{"source": "pairs.jsonl", "weight": 0}]', "weight must be a number > 0, got 0"),
    ('[{"source": "gone.jsonl", "weight": 1, "name": "web"}]', "source 0 (web): "),
    ('[{"source": "pairs.jsonl", "weight": 1', "--data.mixture: "),
])
def test_bad_mixture_is_one_line_exit_2(llava_folder, data, tmp_path, capsys, monkeypatch, mixture, match):
    monkeypatch.chdir(data)
    rc = run_train(["finetune", "--model", str(llava_folder), "--out", str(tmp_path / "out"),
                    "--data.mixture", mixture])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vlmkit: error: ") and "\n" not in err and "Traceback" not in err
    assert match in err, err
    assert not (tmp_path / "out" / "checkpoints").exists()


# ---- several ranks ---------------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(data, tmp_path, strategy):
    """All ranks draw the same source for a micro-batch, so text-only batches skip the vision tower on
    every rank at once (DDP: find_unused_parameters is turned on; FSDP: no collective is skipped on one
    rank alone); the losses and weights match a one-process run."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip(f"{torchrun} not found")
    args = ["finetune", "--smoke", "--steps", "8", "--export", "false", "--ckpt_every", "0", "--freeze.vision_tower",
            "false", "--data.max_length", "400", "--data.mixture", str(data / "mixture.json")]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_train([*args, "--out", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(n)
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "vlmkit.training.cli", *args,
           "--out", str(tmp_path / strategy), "--parallel.strategy", strategy]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(tmp_path / strategy) == pytest.approx(_losses(tmp_path / "single"), rel=1e-5)
    ref, got = _checkpoint(tmp_path / "single"), _checkpoint(tmp_path / strategy)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
