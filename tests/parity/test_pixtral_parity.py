"""Pixtral parity with transformers (tiny random configs, fp32, CPU): the 2-D RoPE, the packed
Pixtral-ViT (PixtralVisionModel), LlavaForConditionalGeneration with a pixtral vision_config
(logits on two images of different sizes, a left-padded batch, greedy tokens, both load
directions). The processor, the pipeline end to end and `vlmkit create` are in
test_pixtral_processor_parity.py.
"""

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import pixtral_checks as pc
from tests.parity.pixtral_checks import BREAK, END, IMG, padded_pixels
from vlmkit.models.common.rope2d import grid_positions, pixtral_inv_freq, pixtral_rope_cos_sin
from vlmkit.models.llava.model import Llava
from vlmkit.models.parts.pixtral_vit import PixtralVisionTower
from vlmkit.models.registry import family_of, get_family
from vlmkit.weights.hf import load_hf, save_hf

ATOL = 1e-5  # measured: 0.0 (bit-identical) for every fp32 comparison in this file
PATCH = 8
# Two images of different sizes (height, width); the batch is zero-padded to 40 x 24.
SIZES = [(16, 24), (40, 8)]


def vision_cfg(**kw):
    return tf.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=64, patch_size=PATCH, hidden_act="silu", **kw)


def pixtral_llava(seed=0):
    text = tf.MistralConfig(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, sliding_window=None)
    cfg = tf.LlavaConfig(vision_config=vision_cfg().to_dict(), text_config=text.to_dict(), image_token_index=IMG,
                         vision_feature_layer=-1, vision_feature_select_strategy="full")
    return hb.randomize(tf.LlavaForConditionalGeneration(cfg), seed)


def test_rope_matches_transformers():
    """cos / sin of our RoPE-2D equal PixtralVisionRotaryEmbedding's, bit for bit."""
    from transformers.models.pixtral.modeling_pixtral import PixtralVisionRotaryEmbedding

    cfg = vision_cfg(rope_parameters={"rope_theta": 10000.0, "rope_type": "axial"})
    positions = torch.cat([grid_positions(3, 5), grid_positions(6, 2)])
    ref_cos, ref_sin = PixtralVisionRotaryEmbedding(cfg)(torch.zeros(1), positions)
    cos, sin = pixtral_rope_cos_sin(positions, pixtral_inv_freq(cfg.head_dim, 10000.0), torch.float32)
    assert torch.equal(cos[0], ref_cos) and torch.equal(sin[0], ref_sin)


def test_vision_tower_packed(tmp_path):
    """Three images of different sizes in one packed call: every hidden state equals transformers'
    (its generate_block_attention_mask path); the folder loads through the pixtral_vision record."""
    hf = hb.randomize(tf.PixtralVisionModel(vision_cfg()), 3)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    assert type(ours) is PixtralVisionTower and family_of(ours).name == "pixtral_vision"
    px, sizes = padded_pixels([(16, 24), (40, 8), (32, 32)], seed=5)
    with torch.no_grad():
        ref = hf(px, image_sizes=sizes, output_hidden_states=True).hidden_states
        got = ours.hidden_states(px, [0, 1, 2], sizes)
    assert got[0].shape == (1, 6 + 5 + 16, 32)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixtral")
    hf = pixtral_llava()
    hf.save_pretrained(folder)
    return hf, load_hf(folder, dtype="float32")


def _prompt(sizes, seed=2):
    return pc.prompt(sizes, PATCH, seed)


def test_logits_two_images_of_different_sizes(pair):
    hf, ours = pair
    assert type(ours) is Llava and isinstance(ours.vision_tower, PixtralVisionTower)
    ids = _prompt(SIZES)
    assert int((ids == IMG).sum()) == 6 + 5 and int((ids == BREAK).sum()) == 1 + 4 and int((ids == END).sum()) == 2
    pc.assert_two_images(hf, ours, SIZES, PATCH)


def test_left_padded_batch(pair):
    pc.assert_left_padded(*pair, SIZES, PATCH)


def test_greedy_generation(pair):
    """vlmkit's engine through the llava record's adapter (which hands image_sizes to the tower):
    a left-padded batch of 2 prompts with different image sizes, tokens identical."""
    pc.assert_greedy(*pair, SIZES, PATCH)


def test_roundtrip(pair, tmp_path):
    """ours -> HF loads strictly in transformers with equal weights and logits; ours -> HF -> ours
    is bit-identical; the tower keys are PixtralVisionModel's (no `vision_model.` level)."""
    hf, ours = pair
    save_hf(ours, tmp_path / "ours")
    hf2 = hb.load_strictly(tf.LlavaForConditionalGeneration, tmp_path / "ours", hf)
    ids = _prompt(SIZES)
    px, sizes = padded_pixels(SIZES)
    with torch.no_grad():
        torch.testing.assert_close(hf2(input_ids=ids, pixel_values=px, image_sizes=sizes).logits,
                                   ours(ids, px, image_sizes=sizes), atol=ATOL, rtol=1e-5)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_bf16_as_close_as_transformers(pair, tmp_path):
    """In bf16 the logits are as close to the float32 ones as transformers' bf16 logits (the patch
    conv runs on the padded batch as theirs does; see PixtralVisionTower.embed)."""
    _, ours = pair
    save_hf(ours, tmp_path)
    pc.assert_bf16(tf.LlavaForConditionalGeneration, tmp_path, SIZES, PATCH)


def test_reads_module_layout_and_shards(tmp_path):
    hb.assert_module_layout_loads(pixtral_llava(), tmp_path)


def test_presets():
    """pixtral-12b: the published shapes; the tower is the ~400M-parameter encoder of the paper."""
    spec = get_family("llava")
    cfg = spec.preset("pixtral-12b")
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.num_layers, v.num_heads, v.patch_size, v.image_size, v.hidden_act) == (
        1024, 24, 16, 16, 1024, "silu")
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_kv_heads, t.head_dim, t.vocab_size) == (
        40, 5120, 14336, 8, 128, 131072)
    assert cfg.image_token_id == 10 and cfg.features.vision_feature_select_strategy == "full"
    with torch.device("meta"):
        big = Llava(cfg)
    tower = sum(p.numel() for p in big.vision_tower.parameters())
    assert 400e6 < tower < 410e6
    assert tuple(big.projector.linear_1.weight.shape) == (5120, 1024)
    hf_cfg = spec.config_to_hf(cfg)
    with torch.device("meta"):
        ref = tf.LlavaForConditionalGeneration(tf.LlavaConfig(**{k: v for k, v in hf_cfg.items() if k != "model_type"}))
    assert sum(p.numel() for p in big.parameters()) == sum(p.numel() for p in ref.parameters())
    debug = Llava(spec.preset("pixtral-debug"))
    px, sizes = padded_pixels(SIZES)
    with torch.no_grad():
        assert debug.encode_images(px, sizes).shape == (1, 11, 64)
    assert hf_cfg["vision_config"]["model_type"] == "pixtral" and spec.config_from_hf(hf_cfg) == cfg


def test_published_config_reads():
    """The vision_config of mistral-community/pixtral-12b names only a few fields (4.x layout):
    the rest take transformers' defaults, rope_theta is top-level."""
    d = {"model_type": "llava", "image_token_index": 10, "projector_hidden_act": "gelu",
         "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
         "text_config": {"model_type": "mistral", "hidden_size": 5120, "head_dim": 128, "intermediate_size": 14336,
                         "max_position_embeddings": 1024000, "num_hidden_layers": 40, "num_key_value_heads": 8,
                         "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0, "sliding_window": None,
                         "vocab_size": 131072},
         "vision_config": {"head_dim": 64, "hidden_act": "silu", "image_size": 1024, "model_type": "pixtral",
                           "patch_size": 16, "rope_theta": 10000.0}}
    cfg = get_family("llava").config_from_hf(d)
    ref = get_family("llava").preset("pixtral-12b")
    assert cfg.vision == ref.vision and cfg.features == ref.features and cfg.projector == ref.projector
    assert (cfg.text.num_heads, cfg.text.rope_theta, cfg.text.hf_model_type) == (32, 1e9, "mistral")
