"""Qwen2-VL's processor against transformers' Qwen2VLImageProcessorPil (the PIL class: transformers'
Qwen2VLProcessor imports a torchvision video processor, unusable here): pixel_values and
image_grid_thw bit-equal for images that keep, shrink (max_pixels) and grow (min_pixels) their size;
the `<|image_pad|>` expansion (one token per merged patch); the builder's checks."""

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from vlmkit.data.processors.qwen2_vl import Qwen2VLProcessor, Qwen2VLProcessorConfig, build_processor, smart_resize
from vlmkit.errors import ConfigError, DataError
from vlmkit.models.qwen2_vl import PRESETS

PATCH, MERGE = 8, 2
_SIZE = {"shortest_edge": 32 * 32, "longest_edge": 64 * 96}


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_image_processor():
    return tf.Qwen2VLImageProcessorPil(size=_SIZE, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2)


@pytest.fixture
def folder(tmp_path, paligemma_tokenizer_dir):
    """A folder with transformers' image processor saved and a tokenizer that has <|image_pad|>."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(paligemma_tokenizer_dir / "tokenizer.json"))
    tok.add_special_tokens(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}')
    _hf_image_processor().save_pretrained(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("h, w", [(40, 56), (33, 47), (200, 120), (16, 20), (48, 64)])
def test_pixels_bit_equal(folder, h, w):
    """40x56 -> 32x64 (the transformers-notes probe: 8 tokens); 200x120 over max_pixels shrinks;
    16x20 under min_pixels grows."""
    ours = Qwen2VLProcessor.from_folder(folder)
    images = [_image(h, w, 0), _image(w, h, 1)]
    ref = _hf_image_processor()(images, return_tensors="pt")
    got = ours([f"<|vision_start|><|image_pad|><|vision_end|>a <|image_pad|>"], [images])
    assert torch.equal(got["image_grid_thw"], ref["image_grid_thw"])
    assert got["pixel_values"].dtype == torch.float32 and torch.equal(got["pixel_values"], ref["pixel_values"])
    pad = ours.image_token_id
    tokens = [int(t * gh * gw) // MERGE**2 for t, gh, gw in ref["image_grid_thw"].tolist()]
    assert int((got["input_ids"] == pad).sum()) == sum(tokens)
    for t, gh, gw in ref["image_grid_thw"].tolist():
        H, W = smart_resize(h, w, PATCH * MERGE, _SIZE["shortest_edge"], _SIZE["longest_edge"])
        assert (H, W) == (gh * PATCH, gw * PATCH) or (W, H) == (gh * PATCH, gw * PATCH)


def test_probe_from_the_notes():
    """16-px patches, merge 2, a budget that neither shrinks nor grows: 40x56 -> 32x64 (8 tokens)."""
    assert smart_resize(40, 56, 32, 32 * 32, 28 * 28 * 1280) == (32, 64)
    assert smart_resize(40, 56, 32, 56 * 56, 28 * 28 * 1280) == (64, 96)  # the class default min grows it


def test_bad_images_are_one_line_errors(folder):
    ours = Qwen2VLProcessor.from_folder(folder)
    with pytest.raises(DataError, match="aspect ratio over 200"):
        ours(["<|image_pad|>"], [[_image(1, 300, 0)]])


def test_builder_checks_ids_and_sizes(folder):
    cfg = PRESETS["debug"]
    proc = Qwen2VLProcessor.from_folder(folder)
    with pytest.raises(ConfigError, match="image_token_index"):
        build_processor(folder, None, cfg)
    from dataclasses import replace
    ok = replace(cfg, image_token_id=proc.image_token_id)
    with pytest.raises(ConfigError, match="patch / merge / temporal sizes"):
        build_processor(folder, None, ok)
    ok = replace(ok, vision=replace(ok.vision, patch_size=PATCH))
    assert isinstance(build_processor(folder, None, ok).config, Qwen2VLProcessorConfig)


def test_processor_batch_runs_both_models(folder):
    """A left-padded batch of 2 prompts (3 images of different sizes) from our processor gives the
    same logits in our model as in transformers' (given mm_token_type_ids from the same ids)."""
    from tests.parity.test_qwen2_vl_parity import _TEXT, _VISION
    from tests.parity import hf_builders as hb
    from vlmkit.weights.hf import load_hf

    proc = Qwen2VLProcessor.from_folder(folder)
    vocab = max(proc.tokenizer.token_id(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")) + 1
    cfg = tf.Qwen2VLConfig(text_config={**_TEXT, "vocab_size": vocab}, vision_config=_VISION,
                           image_token_id=proc.image_token_id, video_token_id=0,
                           vision_start_token_id=proc.tokenizer.token_id("<|vision_start|>"),
                           vision_end_token_id=proc.tokenizer.token_id("<|vision_end|>"))
    hf = hb.randomize(tf.Qwen2VLForConditionalGeneration(cfg), 5).eval()
    hf.save_pretrained(folder / "model")
    ours = load_hf(folder / "model", dtype="float32")
    prompts = ["a <|vision_start|><|image_pad|><|vision_end|> b <|vision_start|><|image_pad|><|vision_end|> c",
               "<|vision_start|><|image_pad|><|vision_end|> what is this"]
    batch = proc(prompts, [[_image(40, 56, 0), _image(70, 33, 1)], [_image(48, 64, 2)]], padding_side="left")
    assert bool((batch["attention_mask"] == 0).any())  # the rows differ in length: left padding is exercised
    types = (batch["input_ids"] == proc.image_token_id).long()
    with torch.no_grad():
        ref = hf(**batch, mm_token_type_ids=types).logits
        got = ours(**batch)
    valid = batch["attention_mask"].bool()
    assert (got - ref)[valid].abs().max().item() <= 1e-5
