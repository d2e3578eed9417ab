"""LLaVA parity with transformers' LlavaForConditionalGeneration (tiny random configs, fp32, CPU):
logits, a left-padded batch, greedy generation, and both load directions of the weights.

Two text models: Llama (the decoder of every published LLaVA) and Gemma (which transformers'
LLaVA accepts as a text_config too): the decoder comes from the text config's family record.
"""

import dataclasses
import json

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import placeholder_checks as pc
from tests.parity.llava_builders import llama_cfg, llava
from vlmkit.errors import CheckpointError
from vlmkit.models.llava import LlavaConfig
from vlmkit.models.llava.model import Llava
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.safetensors_io import write_state_dict

ATOL = 0.0  # every fp32 comparison here is bit-identical (Gemma and Llama decoders)
N_IMG = 16  # (32 / 8)^2 patches; the class token is dropped by the default strategy

TEXT_CASES = [
    pytest.param(lambda: hb.gemma_cfg(1), id="gemma"),
    pytest.param(llama_cfg, id="llama"),
]


def _inputs(batch=2, text_len=7, seed=1, images_per_row=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, hb.IMAGE_TOKEN, (batch, text_len), generator=g)
    image = torch.full((batch, N_IMG * images_per_row), hb.IMAGE_TOKEN)
    ids = torch.cat([text[:, :2], image, text[:, 2:]], 1)  # BOS-ish text, image, question
    pix = torch.randn(batch * images_per_row, 3, 32, 32, generator=g)
    return ids, pix


@pytest.fixture
def pair(tmp_path, request):
    hf = llava(request.param())
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_hf(tmp_path / "hf", dtype="float32")


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_logits(pair):
    hf, ours = pair
    assert type(ours) is Llava and ours.cfg.num_image_tokens == N_IMG
    ids, pix = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_two_images_per_prompt(pair):
    hf, ours = pair
    ids, pix = _inputs(images_per_row=2, seed=4)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
        swapped = ours(ids, pix[[1, 0, 3, 2]])
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert not torch.allclose(got, swapped)  # image order matters


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_left_padding(pair):
    hf, ours = pair
    pc.assert_left_padding(hf, ours, *_inputs(), atol=ATOL)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_greedy_generation(pair):
    hf, ours = pair
    pc.assert_greedy_generation(hf, ours, *_inputs(seed=3))


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_roundtrip(pair, tmp_path):
    """HF -> ours is strict and equal (above); ours -> HF -> transformers / ours (see the helper)."""
    hf, ours = pair
    pc.assert_round_trip(tf.LlavaForConditionalGeneration, hf, ours, tmp_path / "ours", *_inputs(), atol=ATOL)


@pytest.mark.parametrize("layer,strategy", [((-3, -1), "default"), (-1, "full")])
def test_feature_layer_variants(tmp_path, layer, strategy):
    """A list of feature layers (concatenated channels) and the "full" strategy, end to end."""
    hf = llava(hb.gemma_cfg(1), vision_feature_layer=list(layer) if isinstance(layer, tuple) else layer,
               vision_feature_select_strategy=strategy)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    n = N_IMG + (strategy == "full")
    assert ours.cfg.num_image_tokens == n
    g = torch.Generator().manual_seed(6)
    ids = torch.cat([torch.full((1, n), hb.IMAGE_TOKEN), torch.randint(3, hb.IMAGE_TOKEN, (1, 5), generator=g)], 1)
    pix = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix), hf(input_ids=ids, pixel_values=pix).logits, atol=ATOL, rtol=0)


def test_placeholder_count_mismatch(tmp_path):
    hf = llava(hb.gemma_cfg(1))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids, pix = _inputs()
    with pytest.raises(ValueError, match="32 <image> tokens in the input but the images give 16 features"):
        ours(ids, pix[:1])


def test_presets():
    cfg = LlavaConfig.from_preset("llava-1.5-7b-hf")
    assert cfg.num_image_tokens == 576 and cfg.image_token_id == 32000
    assert (cfg.vision.hidden_size, cfg.vision.num_layers, cfg.vision.image_size, cfg.vision.patch_size) == (1024, 24, 336, 14)
    t = cfg.text
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.vocab_size) == (32, 4096, 11008, 32, 32064)
    model = Llava(LlavaConfig.from_preset("debug"))
    assert model.projector.linear_1.in_features == 32 and model.projector.linear_2.out_features == 64
    with torch.device("meta"):
        big = Llava(cfg)
    assert tuple(big.projector.linear_1.weight.shape) == (4096, 1024)
    with pytest.raises(ValueError, match="vision_feature_layer"):
        LlavaConfig.from_preset("debug", features=dataclasses.replace(cfg.features, vision_feature_layer=-5))


def test_bf16_bit_identical(tmp_path):
    """In bf16 our logits equal transformers' bit for bit (CLIP tower, projector and Gemma decoder
    run the same ops in the same order)."""
    llava(hb.gemma_cfg(1)).save_pretrained(tmp_path)
    pc.assert_bf16_identical(tf.LlavaForConditionalGeneration, tmp_path, *_inputs())


def test_reads_module_layout_and_shards(tmp_path):
    """transformers 5's own module names (`model.language_model.*`, `model.vision_tower.*`,
    `model.multi_modal_projector.*`, top-level `lm_head`) in a sharded folder load to the same model."""
    hb.assert_module_layout_loads(llava(hb.gemma_cfg(1)), tmp_path)


def test_bad_folders(tmp_path):
    """An unknown vision tower type and a missing projector tensor are one-line CheckpointErrors."""
    llava(hb.gemma_cfg(1)).save_pretrained(tmp_path / "hub")
    short = pc.copy_folder(tmp_path / "hub", tmp_path / "short", drop="multi_modal_projector.linear_2.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: projector\.linear_2\.weight$"):
        load_hf(short)
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    cfg["vision_config"]["model_type"] = "dinov2"
    (tmp_path / "hub" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported LLaVA vision model_type 'dinov2'"):
        load_hf(tmp_path / "hub")


def test_siglip_tower(tmp_path):
    """A LLaVA whose vision_config is SigLIP (no class token; "full" keeps every patch) loads and
    matches too: the tower is chosen by the vision model_type, not by the family."""
    cfg = tf.LlavaConfig(vision_config=hb.siglip_vision_cfg(use_head=False).to_dict(),
                         text_config=hb.gemma_cfg(1).to_dict(), image_token_index=hb.IMAGE_TOKEN,
                         vision_feature_layer=-1, vision_feature_select_strategy="full")
    hf = hb.randomize(tf.LlavaForConditionalGeneration(cfg))
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf", dtype="float32")
    assert not ours.cfg.vision.class_token and ours.cfg.num_image_tokens == N_IMG
    ids, pix = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix), hf(input_ids=ids, pixel_values=pix).logits, atol=ATOL, rtol=0)
    save_hf(ours, tmp_path / "ours")
    _, info = tf.LlavaForConditionalGeneration.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
