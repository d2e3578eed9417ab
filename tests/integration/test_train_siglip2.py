"""`vlmkit train-contrastive siglip2`: SigLIP 2 NaFlex trained on images of different aspect
ratios, resized per sample and packed per batch; the loss falls on repeated data, a killed run
resumes bit-identically, and the export loads in transformers with the same embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

import vlmkit
from vlmkit.cli import main
from vlmkit.data.processors.two_tower import TwoTowerProcessor, image_config, image_processor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import apply_overrides
from vlmkit.training.contrastive import PairBatches
from vlmkit.training.recipes.contrastive import ManifestPairs, _preset_config, build_model, run_contrastive
from vlmkit.training.recipes.contrastive import siglip2 as siglip2_recipe

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SIZES = [(48, 40), (20, 70), (90, 24), (33, 33)]  # (w, h)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """8 pairs: 4 colours x 2 shapes, each drawn at its own size (so every batch packs mixed grids)."""
    root = tmp_path_factory.mktemp("siglip2_train")
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        for j, shape in enumerate(("circle", "square")):
            w, h = SIZES[(i + j) % len(SIZES)]
            image = Image.new("RGB", (w, h), (240, 240, 240))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)([w // 6, h // 6, w - w // 6, h - h // 6], fill=rgb)
            image.save(root / f"{name}_{shape}.png")
            rows.append({"image": f"{name}_{shape}.png", "caption": f"a {name} {shape}"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "m.jsonl"


def _losses(out) -> list[float]:
    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "siglip2"
    assert main(["train-contrastive", "siglip2", "--smoke", "--data", str(manifest), "--out", str(out),
                 "--steps", "12"]) == 0
    return out


def test_smoke_loss_is_finite_and_falls_on_repeated_data(trained):
    losses = _losses(trained)
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses  # the 8 pairs are seen 12 times


def test_batches_are_packed_per_sample_sizes(manifest, tmp_path):
    base = _preset_config(siglip2_recipe(smoke=True).model)
    fields = image_config(base)
    pairs = ManifestPairs(manifest, image_processor(fields))
    tok_dir = tmp_path / "tok"
    tok = Tokenizer.from_folder(build_small_tokenizer(pairs.texts, tok_dir, 320))
    model = build_model(base, tok, 0.02, 0)
    processor = TwoTowerProcessor.for_model(model, tok, fields=fields, tokenizer_folder=tok_dir)
    batch = PairBatches(None, tok, model, 8, processor=processor).collate([pairs[i] for i in range(8)])
    shapes = batch["spatial_shapes"]  # [8, 2]
    assert batch["pixel_values"].shape == (int(shapes.prod(-1).sum()), 3 * 8 * 8)  # [N, 3 p p], no padding
    assert len({tuple(s) for s in shapes.tolist()}) == 3  # 48 x 40 and 33 x 33 both fill 4 x 4
    want = processor.images.inputs([manifest.parent / r for r in [json.loads(ln)["image"]
                                                                  for ln in manifest.read_text().splitlines()]])
    assert torch.equal(batch["pixel_values"], want["pixel_values"])  # training pixels are inference's
    assert torch.equal(shapes, want["spatial_shapes"])


def test_export_loads_in_transformers_with_the_same_embeddings(trained, manifest):
    export = trained / "export"
    hf = tf.Siglip2Model.from_pretrained(export).eval()
    tt = vlmkit.load_two_tower(str(export), dtype="float32")
    fields = json.loads((export / "preprocessor_config.json").read_text())
    files = sorted(manifest.parent.glob("*.png"))
    pil = Siglip2ImageProcessorPil(patch_size=fields["patch_size"], max_num_patches=fields["max_num_patches"])
    batch = pil([Image.open(f) for f in files], return_tensors="pt")
    captions = ["a red circle", "a Blue square", "a yellow circle and a green square"]
    ids, mask = tt.processor.tokenize(captions)
    with torch.no_grad():
        ref_img = hf.get_image_features(**batch).pooler_output
        ref_txt = hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    ref_img, ref_txt = (x / x.norm(dim=-1, keepdim=True) for x in (ref_img, ref_txt))
    err = (tt.embed_images([str(f) for f in files]) - ref_img).abs().max()
    assert err <= 1e-5, err
    torch.testing.assert_close(tt.embed_texts(captions), ref_txt, atol=1e-6, rtol=0)


def test_resume_is_bit_identical(manifest, tmp_path):
    straight = apply_overrides(siglip2_recipe(smoke=True), {
        "out_dir": str(tmp_path / "a"), "export": "false", "data.manifest": str(manifest), "data.batch_size": "4"})
    full = run_contrastive(straight)
    part = apply_overrides(straight, {"out_dir": str(tmp_path / "b"), "stop_after": "3"})
    run_contrastive(part)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_000003"
    resumed = run_contrastive(apply_overrides(part, {"stop_after": "none"}), resume=True)
    assert resumed.losses == full.losses and len(full.losses) == 6
    a, b = (load_file(str(latest_checkpoint(tmp_path / r / "checkpoints") / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
