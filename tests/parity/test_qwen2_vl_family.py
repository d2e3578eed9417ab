"""The Qwen2-VL family against transformers (tiny random config, CPU, fp32): logits of a left-padded
batch of 2 prompts with 3 images of different sizes, greedy tokens through the generation adapter
and the shared prefill / decode vs transformers' generate (given mm_token_type_ids, as its
processor returns them), bf16 logits, and HF round trips (save_pretrained -> load_hf, save_hf ->
from_pretrained). Inputs are built directly (flattened patches + grids), except for the folder made
by `vlmkit create`, which runs our processor.
"""

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from tests.parity import hf_builders as hb
from tests.parity.placeholder_checks import assert_same_greedy
from tests.parity.qwen2_vl_checks import bf16_pair, max_logit_diff, saved_pair
from tests.parity.test_qwen2_vl_parity import GRIDS, _pixels, _prompts, _reference
from vlmkit.models.qwen2_vl import PRESETS, Qwen2VL
from vlmkit.models.qwen2_vl import hf_mapping
from vlmkit.models.registry import family_of
from vlmkit.weights.create import create_checkpoint
from vlmkit.weights.hf import load_hf, save_hf


def _pair(tmp_path, seed: int = 4):
    return saved_pair(_reference, tmp_path, seed)


def _batch():
    ids, mask, types = _prompts()
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_pixels(GRIDS), image_grid_thw=GRIDS), types


def test_saved_layout_and_strict_load(tmp_path):
    hf, ours = _pair(tmp_path)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "hub" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"visual.blocks.0.attn.qkv.weight", "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"} <= keys
    assert type(ours) is Qwen2VL and family_of(ours).name == "qwen2_vl"


def test_logits_match_reference(tmp_path):
    hf, ours = _pair(tmp_path)
    diff = max_logit_diff(hf, ours, *_batch())
    assert diff <= 1e-5, diff


def test_bf16_logits_bit_equal(tmp_path):
    """Both loaded in bf16 from the same folder: logits bit-identical at real tokens (the tower
    attends frame by frame as the reference's SDPA path does; a block-diagonal mask over the packed
    sequence instead summed in another order, one bf16 step, 2**-7, apart)."""
    hf, ours = bf16_pair(tf.Qwen2VLForConditionalGeneration, _reference, tmp_path)
    batch, types = _batch()
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    assert max_logit_diff(hf, ours, batch, types) == 0.0


def test_greedy_tokens_match_generate(tmp_path):
    """vlmkit's engine (`generate`: the family adapter's M-RoPE prefill, then [3, B, 1] decode
    positions) vs transformers' generate, 8 new tokens, batch of 2 with left padding."""
    hf, ours = _pair(tmp_path, seed=5)  # a seed whose greedy tokens vary (many repeat one token)
    batch, types = _batch()
    new = 8
    ref = assert_same_greedy(hf, ours, batch, new, hf_only=dict(mm_token_type_ids=types))
    assert all(len(set(row)) > 3 for row in ref)


def test_created_debug_folder_loads_in_transformers(tmp_path):
    """`vlmkit create --family qwen2_vl --preset debug` (tied head): transformers loads the folder
    strictly and gives our logits on our processor's left-padded batch (1 and 2 images)."""
    from vlmkit.pipeline import load

    folder = create_checkpoint(tmp_path / "q", "debug", family="qwen2_vl")
    hf, pipe = hb.load_strictly(tf.Qwen2VLForConditionalGeneration, folder), load(folder, dtype="float32")
    assert hf.config.text_config.tie_word_embeddings
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 56), (70, 30)]]
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    batch = pipe.processor([f"{pad}hi", f"{pad} and {pad} two"], [images[:1], images], padding_side="left")
    types = (batch["input_ids"] == hf.config.image_token_id).long()
    with torch.no_grad():
        ref = hf(**batch, mm_token_type_ids=types).logits
        got = pipe.model(**batch)
    valid = batch["attention_mask"].bool()
    assert not valid.all()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_prompt_ending_in_an_image_is_refused(tmp_path):
    _, ours = _pair(tmp_path)
    batch, _ = _batch()
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][:, -1] = ours.cfg.image_token_id
    with pytest.raises(ValueError, match="must end with text"):
        family_of(ours).generation.prepare(ours, batch)


def test_round_trip_through_save_hf(tmp_path):
    """ours -> save_hf -> transformers' from_pretrained (strict, equal tensors, equal logits) ->
    load_hf again: bit-identical; the config survives config_to_hf / config_from_hf."""
    hf, ours = _pair(tmp_path)
    save_hf(ours, tmp_path / "ours")
    back = hb.load_strictly(tf.Qwen2VLForConditionalGeneration, tmp_path / "ours", reference=hf)
    batch, types = _batch()
    with torch.no_grad():
        assert torch.equal(back(**batch, mm_token_type_ids=types).logits, hf(**batch, mm_token_type_ids=types).logits)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


def test_published_4x_config_reads():
    """The published 4.x config.json form (text fields at the top, rope_scaling type mrope)."""
    d = hf_mapping.config_to_hf(PRESETS["qwen2-vl-2b-instruct"])
    text = d.pop("text_config")
    rope = text.pop("rope_parameters")
    old = {**d, **text, "model_type": "qwen2_vl", "rope_theta": rope["rope_theta"],
           "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
    v = old["vision_config"]
    v["in_chans"], v["spatial_patch_size"] = v.pop("in_channels"), v.pop("patch_size")
    assert hf_mapping.config_from_hf(old) == PRESETS["qwen2-vl-2b-instruct"]
    assert hf_mapping.config_from_hf(hf_mapping.config_to_hf(PRESETS["debug"])) == PRESETS["debug"]


def test_preset_has_transformers_shapes():
    """The 2B preset written as config.json builds transformers' model with our parameter count."""
    d = hf_mapping.config_to_hf(PRESETS["qwen2-vl-2b-instruct"])
    cfg = tf.Qwen2VLConfig(**{k: v for k, v in d.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        theirs = tf.Qwen2VLForConditionalGeneration(cfg)
        ours = Qwen2VL(PRESETS["qwen2-vl-2b-instruct"])
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_theirs
