"""Qwen2.5-VL against transformers' Qwen2_5_VLForConditionalGeneration (tiny random config, CPU,
fp32): the window partition (transformers' get_vision_window_index), vision features (merged
tokens and the last hidden state) for images of different sizes and a 2-frame clip, logits of a
left-padded batch of 2 prompts with 3 images of different sizes, greedy tokens through vlmkit's
engine vs transformers' generate, HF round trips, the published 4.x config.json form, and the
presets' parameter counts on the meta device.
"""

import pytest
import torch
import transformers as tf
from transformers.vision_utils import get_vision_window_index

from tests.parity import hf_builders as hb
from tests.parity.placeholder_checks import assert_same_greedy
from tests.parity.qwen2_vl_checks import bf16_pair, max_logit_diff, saved_pair
from tests.parity.test_qwen2_vl_family import _batch
from tests.parity.test_qwen2_vl_parity import IMG, MERGE, _TEXT, _pixels
from vlmkit.models.parts.qwen2_vit import window_order
from vlmkit.models.qwen2_5_vl import PRESETS, Qwen2_5_VL
from vlmkit.models.qwen2_5_vl import hf_mapping
from vlmkit.models.registry import family_of
from vlmkit.weights.hf import load_hf, save_hf

# Windows of 32 px = 2 x 2 merged tokens (8-px patches, merge 2); block 1 of 3 attends fully.
_VISION = dict(depth=3, hidden_size=32, intermediate_size=40, num_heads=4, out_hidden_size=48, patch_size=8,
               spatial_merge_size=MERGE, temporal_patch_size=2, in_channels=3, window_size=32,
               fullatt_block_indexes=[1], tokens_per_second=2)
# Grids whose merged sizes (2x2, 3x5, 4x3 and a 2-frame 4x3 clip) leave partial windows.
_TOWER_GRIDS = torch.tensor([[1, 4, 4], [1, 6, 10], [1, 8, 6], [2, 8, 6]])


def reference(seed: int = 0, **overrides):
    cfg = tf.Qwen2_5_VLConfig(text_config=_TEXT, vision_config=_VISION, image_token_id=IMG, video_token_id=101,
                              vision_start_token_id=102, vision_end_token_id=103, **overrides)
    return hb.randomize(tf.Qwen2_5_VLForConditionalGeneration(cfg), seed).eval()


def pair(tmp_path, seed: int = 4):
    return saved_pair(reference, tmp_path, seed)


def test_window_order_equals_reference():
    """The permutation and the window lengths (cumulated: cu_window_seqlens) for 4 grids."""
    order, lengths = window_order(_TOWER_GRIDS.tolist(), MERGE, window=2)
    ref_order, ref_cu = get_vision_window_index(_TOWER_GRIDS, MERGE, 32, 8)
    assert torch.equal(order, ref_order)
    assert torch.equal(torch.tensor([0, *lengths]).cumsum(0).to(ref_cu.dtype), ref_cu)


def test_vision_features_match_reference(tmp_path):
    """Merged tokens (images in order) and the last hidden state: ours is in input order,
    transformers' in window order, so ours is permuted to compare."""
    from vlmkit.models.parts.qwen2_vit import _patch_order

    hf, ours = pair(tmp_path)
    px = _pixels(_TOWER_GRIDS)
    with torch.no_grad():
        ref = hf.model.visual(px, grid_thw=_TOWER_GRIDS)
        merged, hidden = ours.encode_images(px, _TOWER_GRIDS), ours.visual.encode(px, _TOWER_GRIDS)
    order, _ = window_order(_TOWER_GRIDS.tolist(), MERGE, window=2)
    d_merged = (merged - ref.pooler_output).abs().max().item()
    d_hidden = (hidden[_patch_order(order, MERGE)] - ref.last_hidden_state).abs().max().item()
    assert d_merged <= 1e-5 and d_hidden <= 1e-5, (d_merged, d_hidden)


def test_packed_equals_one_at_a_time(tmp_path):
    """Windows never cross images: 4 packed inputs (one a clip) equal each encoded alone, and
    changing the first image's pixels changes no other input's tokens."""
    _, ours = pair(tmp_path)
    px = _pixels(_TOWER_GRIDS, seed=7)
    chunks = px.split(_TOWER_GRIDS.prod(-1).tolist())
    with torch.no_grad():
        packed = ours.visual(px, _TOWER_GRIDS)
        alone = torch.cat([ours.visual(p, g[None]) for p, g in zip(chunks, _TOWER_GRIDS)])
        px2 = px.clone()
        px2[: len(chunks[0])] += 1.0
        changed = ours.visual(px2, _TOWER_GRIDS)
    assert (packed - alone).abs().max().item() <= 1e-5
    n0 = ours.visual.num_tokens(_TOWER_GRIDS)[0]
    assert torch.equal(changed[n0:], packed[n0:]) and not torch.allclose(changed[:n0], packed[:n0])


def test_windows_change_the_features(tmp_path):
    """The window switch is live: the same weights with every block fully attending differ."""
    from dataclasses import replace

    _, ours = pair(tmp_path)
    px = _pixels(_TOWER_GRIDS[1:2])
    with torch.no_grad():
        windowed = ours.visual(px, _TOWER_GRIDS[1:2])
        ours.visual.cfg = replace(ours.visual.cfg, window_size=None)
        full = ours.visual(px, _TOWER_GRIDS[1:2])
    assert (windowed - full).abs().max().item() > 1e-3


def test_logits_match_reference(tmp_path):
    hf, ours = pair(tmp_path)
    diff = max_logit_diff(hf, ours, *_batch())
    assert diff <= 1e-5, diff


def test_bf16_logits_bit_equal(tmp_path):
    """Both in bf16 from one folder: windowed tower and decoder give transformers' logits exactly."""
    hf, ours = bf16_pair(tf.Qwen2_5_VLForConditionalGeneration, reference, tmp_path)
    batch, types = _batch()
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    assert max_logit_diff(hf, ours, batch, types) == 0.0


def test_greedy_tokens_match_generate(tmp_path):
    """8 new tokens, a left-padded batch of 2 prompts with images of different sizes."""
    hf, ours = pair(tmp_path, seed=4)  # a seed whose greedy tokens vary (many repeat one or two)
    batch, types = _batch()
    ref = assert_same_greedy(hf, ours, batch, 8, hf_only=dict(mm_token_type_ids=types))
    assert all(len(set(row)) > 3 for row in ref)


def test_round_trips(tmp_path):
    """transformers' state dict loads strictly (every tensor equal); ours -> save_hf -> transformers
    loads strictly with the same tensors and logits; -> load_hf again: config and tensors identical."""
    hf, ours = pair(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "hub" / "model.safetensors"))
    save_hf(ours, tmp_path / "ours")
    ours_saved = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert saved.keys() == ours_saved.keys() and all(torch.equal(saved[k], ours_saved[k]) for k in saved)
    back = hb.load_strictly(tf.Qwen2_5_VLForConditionalGeneration, tmp_path / "ours", reference=hf)
    batch, types = _batch()
    with torch.no_grad():
        assert torch.equal(back(**batch, mm_token_type_ids=types).logits, hf(**batch, mm_token_type_ids=types).logits)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert type(again) is Qwen2_5_VL and family_of(again).name == "qwen2_5_vl" and again.cfg == ours.cfg
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


def test_published_4x_config_reads():
    """The 4.x config.json form of the published folders (text fields at the top, rope_scaling
    type mrope, in_chans / spatial_patch_size) gives the preset; 5.x written and read back too."""
    for name in ("qwen2.5-vl-3b-instruct", "debug"):
        d = hf_mapping.config_to_hf(PRESETS[name])
        assert hf_mapping.config_from_hf(d) == PRESETS[name]
    d = hf_mapping.config_to_hf(PRESETS["qwen2.5-vl-3b-instruct"])
    text, v = d.pop("text_config"), d["vision_config"]
    rope = text.pop("rope_parameters")
    old = {**d, **text, "model_type": "qwen2_5_vl", "rope_theta": rope["rope_theta"],
           "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
    v["in_chans"], v["spatial_patch_size"] = v.pop("in_channels"), v["patch_size"]
    assert hf_mapping.config_from_hf(old) == PRESETS["qwen2.5-vl-3b-instruct"]


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b-instruct", "qwen2.5-vl-7b-instruct"])
def test_preset_has_transformers_parameter_count(name):
    """Each preset written as config.json builds transformers' model (meta device) with our count."""
    d = hf_mapping.config_to_hf(PRESETS[name])
    cfg = tf.Qwen2_5_VLConfig(**{k: v for k, v in d.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        theirs = tf.Qwen2_5_VLForConditionalGeneration(cfg)
        ours = Qwen2_5_VL(PRESETS[name])
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_theirs


def test_created_folder_and_processor_match_transformers(tmp_path):
    """`vlmkit create --family qwen2_5_vl --preset debug`: transformers loads the folder strictly;
    its Qwen2_5_VLProcessor (with the PIL Qwen2-VL image processor, no video processor: torchvision)
    gives our processor's left-padded batch for 3 images of different sizes, bit for bit, and the
    two models give the same logits on it."""
    import json

    import numpy as np
    from PIL import Image

    from vlmkit.pipeline import load
    from vlmkit.weights.create import create_checkpoint

    folder = create_checkpoint(tmp_path / "q", "debug", family="qwen2_5_vl")
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    hf, pipe = hb.load_strictly(tf.Qwen2_5_VLForConditionalGeneration, folder), load(folder, dtype="float32")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 56), (70, 30), (90, 90)]]
    pad = "<|vision_start|><|image_pad|><|vision_end|>"
    prompts = [f"{pad}hi", f"{pad} and {pad} two"]
    ours = pipe.processor(prompts, [images[:1], images[1:]], padding_side="left")
    with pytest.MonkeyPatch.context() as mp:  # the empty video slot would fail the class check
        mp.setattr(tf.Qwen2_5_VLProcessor, "check_argument_for_proper_class", lambda *a: None)
        hf_proc = tf.Qwen2_5_VLProcessor(image_processor=tf.Qwen2VLImageProcessorPil.from_pretrained(folder),
                                         tokenizer=tf.AutoTokenizer.from_pretrained(folder), video_processor=None,
                                         chat_template=(folder / "chat_template.jinja").read_text())
    ref = hf_proc(text=prompts, images=images, padding="longest", padding_side="left", return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    with torch.no_grad():
        want = hf(**ref).logits  # transformers' processor gives mm_token_type_ids itself
        got = pipe.model(**ours)
    valid = ours["attention_mask"].bool()
    assert not valid.all()
    diff = (got - want)[valid].abs().max().item()
    assert diff <= 1e-5, diff
