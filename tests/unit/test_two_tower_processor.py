"""The shared image-text processor: pixels equal to transformers' image processors (PIL backend),
the same tensors in training (dataset + collate) and inference, text laid out per `text_format`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.processors.two_tower import TwoTowerImageProcessor, TwoTowerProcessor, image_config, tokenize
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.contracts import TextFormat
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.two_tower import SiglipTwoTower
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.contrastive import PairBatches
from vlmkit.training.recipes.contrastive import ManifestPairs

CAPTIONS = ["a red circle", "a blue square and a green star", "a yellow triangle"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_folder(build_small_tokenizer(CAPTIONS * 4, tmp_path_factory.mktemp("tok"), 300))


def _photo(seed: int, w: int, h: int) -> Image.Image:
    """A smooth image with edges (noise alone would hide resize-order differences)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) % 64 * 4], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(50, 37), (32, 32), (20, 70)])
def test_siglip_pixels_equal_transformers(size):
    transformers = pytest.importorskip("transformers")
    image = _photo(0, *size)
    d = image_config(SiglipTwoTower(SiglipConfig.from_preset("debug")))  # what the family writes
    ours = TwoTowerImageProcessor.from_dict(d)([image])
    ref = transformers.SiglipImageProcessorPil(**{k: v for k, v in d.items() if k != "image_processor_type"})
    theirs = ref(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, 32, 32) and ours.dtype == torch.float32
    assert torch.equal(ours, theirs)


def test_clip_style_config_resizes_shortest_edge_then_crops_as_transformers():
    transformers = pytest.importorskip("transformers")
    d = {"size": {"shortest_edge": 24}, "crop_size": {"height": 24, "width": 24}, "do_center_crop": True,
         "resample": 3, "image_mean": [0.48145466, 0.4578275, 0.40821073],
         "image_std": [0.26862954, 0.26130258, 0.27577711]}
    image = _photo(1, 40, 29)
    ours = TwoTowerImageProcessor.from_dict(d)([image])
    theirs = transformers.CLIPImageProcessorPil(**d)(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == (1, 3, 24, 24)
    assert torch.equal(ours, theirs)


def test_training_batches_equal_inference_pixels(tmp_path, tok):
    """A manifest read for training (ManifestPairs -> PairBatches.collate) gives the pixel tensors
    that inference (TwoTowerProcessor from the folder) gives for the same files."""
    model = SiglipTwoTower(SiglipConfig.from_preset("debug"))
    sizes = [(50, 37), (32, 32), (17, 90)]
    with open(tmp_path / "m.jsonl", "w") as f:
        for i, (size, caption) in enumerate(zip(sizes, CAPTIONS)):
            _photo(i, *size).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "caption": caption}) + "\n")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image_config(model)))
    images = TwoTowerImageProcessor.for_model(model, tmp_path)
    pairs = ManifestPairs(tmp_path / "m.jsonl", images)
    batch = PairBatches(None, tok, model, 3, images).collate([pairs[i] for i in range(3)])
    proc = TwoTowerProcessor.for_model(model, tok, tmp_path)
    infer = proc(CAPTIONS, [tmp_path / f"{i}.png" for i in range(3)])
    assert torch.equal(batch["pixel_values"], infer["pixel_values"])
    assert torch.equal(batch["input_ids"], infer["input_ids"])
    assert torch.equal(batch["attention_mask"], infer["attention_mask"])


def test_folder_preprocessor_config_wins_over_the_family_default(tmp_path):
    model = SiglipTwoTower(SiglipConfig.from_preset("debug"))
    default = image_config(model, tmp_path)  # no file: the family's
    assert default["size"] == {"height": 32, "width": 32} and default["resample"] == 3
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**default, "image_mean": [0.0, 0.0, 0.0],
                                                                   "image_std": [1.0, 1.0, 1.0]}))
    pixels = TwoTowerImageProcessor.for_model(model, tmp_path)([_photo(0, 32, 32)])
    assert pixels.min() >= 0 and pixels.max() <= 1  # rescaled only: the folder's mean/std were used


def test_text_layouts_follow_the_models_text_format(tok):
    siglip = SiglipTwoTower(SiglipConfig.from_preset("debug"))
    coca = CoCa(CocaConfig.from_preset("debug"))
    ids, mask = TwoTowerProcessor.for_model(siglip, tok).tokenize(CAPTIONS)
    T = siglip.cfg.text.max_position_embeddings
    assert ids.shape == (3, T)  # SigLIP: padded to every position (it pools the last one)
    first = tok.encode(CAPTIONS[0])
    assert ids[0, :len(first) + 1].tolist() == first + [tok.eos_id] and mask[0].sum() == len(first) + 1
    assert (ids[0, len(first) + 1:] == tok.pad_id).all()
    short = [CAPTIONS[0], CAPTIONS[2]]
    ids, mask = TwoTowerProcessor.for_model(coca, tok).tokenize(short)
    longest = max(len(tok.encode(c)) for c in short) + 2
    assert longest < coca.cfg.context_length
    assert ids.shape == (2, longest) and (ids[:, 0] == tok.bos_id).all()  # CoCa: BOS, longest row


def test_truncation_keeps_the_final_eos(tok):
    fmt = TextFormat(max_len=5, bos=True, pad_to_max=True)
    ids, mask = tokenize(tok, [" and ".join(CAPTIONS * 3)], fmt)
    assert ids.shape == (1, 5) and ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id and mask.all()
