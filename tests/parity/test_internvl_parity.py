"""InternVL parity with transformers' InternVLForConditionalGeneration (tiny random configs, fp32,
CPU): logits with several tiles per image, a left-padded batch with different image counts,
greedy generation through vlmkit's engine, both load directions, bf16, feature layers, presets.

Measured (fp32): every logits comparison below is bit-identical (max |diff| 0.0), so ATOL is 0.
Two towers are exercised: InternVL3's (LayerNorm, q/k/v biases, no final norm) and the
InternViT-6B switches (RMSNorm, QK-norm, no biases, a final LayerNorm that only layer -1 reads).
"""

import json

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity import placeholder_checks as pc
# A fixture: the processor-parity tests' tokenizer (test vocabulary + every family's image tokens).
from tests.parity.test_processors_typec import family_tokenizer_dir  # noqa: F401
from vlmkit.errors import CheckpointError
from vlmkit.generation import SamplingConfig
from vlmkit.models.internvl import InternVL, InternVLConfig
from vlmkit.models.parts.connectors import pixel_shuffle
from vlmkit.models.registry import get_family
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.safetensors_io import SafetensorsReader, write_state_dict

ATOL = 0.0  # measured: 0.0 for every fp32 comparison in this file
IMG, START, END = hb.IMAGE_TOKEN, 297, 298  # <IMG_CONTEXT>, <img>, </img>
# A padded row vs the same row alone is another batch shape, so other matmul blockings: measured
# 2.7e-7 max |diff| (this compares vlmkit with itself, not with transformers).
PAD_ATOL = 1e-6
PER_TILE = 4  # (32 / 8)^2 = 16 patches, pixel shuffle 2 -> 4 tokens per tile

TOWERS = {
    "internvl3": dict(attention_bias=True),
    "6b-switches": dict(use_qk_norm=True, norm_type="rms_norm", use_mean_pooling=False, attention_bias=False),
}


def internvl_hf(tower="internvl3", tie=False, seed=0, **kw):
    vision = tf.InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     image_size=32, patch_size=8, **TOWERS[tower])
    text = tf.Qwen2Config(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = tf.InternVLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=IMG,
                            image_seq_length=PER_TILE, tie_word_embeddings=tie, **kw)
    return hb.randomize(tf.InternVLForConditionalGeneration(cfg), seed)


def _prompt(g, tiles_per_image, text_len=4):
    """BOS-ish text, then per image `<img>` + 4 * tiles `<IMG_CONTEXT>` + `</img>` and some text."""
    parts = [torch.randint(3, START, (2,), generator=g)]
    for n in tiles_per_image:
        parts += [torch.tensor([START]), torch.full((PER_TILE * n,), IMG), torch.tensor([END]),
                  torch.randint(3, START, (text_len,), generator=g)]
    return torch.cat(parts)


def _batch(rows, seed=1):
    """Left-padded batch of prompts with the given tiles per image; pixel_values in tile order."""
    g = torch.Generator().manual_seed(seed)
    prompts = [_prompt(g, tiles) for tiles in rows]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    pix = torch.randn(sum(sum(t) for t in rows), 3, 32, 32, generator=g)
    return ids, mask, pix


@pytest.fixture(params=[("internvl3", False), ("6b-switches", True)], ids=["internvl3-untied", "6b-switches-tied"])
def pair(tmp_path, request):
    hf = internvl_hf(*request.param)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_hf(tmp_path / "hf", dtype="float32")


def test_logits_several_tiles(pair):
    """Two prompts, each one image of 3 tiles (2 + thumbnail) and one of 1 tile."""
    hf, ours = pair
    assert type(ours) is InternVL and ours.cfg.num_image_tokens == PER_TILE
    ids, mask, pix = _batch([(3, 1), (1, 3)])
    assert mask.all()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix).logits
        got = ours(ids, pix)
        swapped = ours(ids, pix.flip(0))
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert not torch.allclose(got, swapped)  # tile order matters


def test_left_padded_batch(pair):
    """Row 0: one image of 2 tiles; row 1: two images (3 + 1 tiles); row 0 left padded. Equal at
    real tokens with generate's positions, and row 0 equals itself unpadded."""
    hf, ours = pair
    ids, mask, pix = _batch([(2,), (3, 1)])
    pad = int((mask[0] == 0).sum())
    assert pad > 0
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, pix, mask)
        alone = ours(ids[:1, pad:], pix[:2])
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[0, pad:], alone[0], atol=PAD_ATOL, rtol=0)


def test_greedy_generation(pair):
    """vlmkit's engine with the family's adapter vs transformers' generate, left-padded batch of 2."""
    hf, ours = pair
    ids, mask, pix = _batch([(2,), (3, 1)], seed=3)
    pc.assert_same_greedy(hf, ours, dict(input_ids=ids, attention_mask=mask, pixel_values=pix))


def test_roundtrip(pair, tmp_path):
    """ours -> HF loads strictly in transformers with equal tensors and logits; ours -> HF -> ours is
    bit-identical (HF -> ours strict is the fixture's load_hf)."""
    hf, ours = pair
    save_hf(ours, tmp_path / "ours")
    hf2, info = tf.InternVLForConditionalGeneration.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    assert hf2.state_dict().keys() == hf_sd.keys()
    for k, v in hf2.state_dict().items():
        assert torch.equal(v, hf_sd[k]), k
    ids, _, pix = _batch([(3, 1), (1, 3)])
    with torch.no_grad():
        torch.testing.assert_close(hf2.eval()(input_ids=ids, pixel_values=pix).logits, ours(ids, pix), atol=ATOL, rtol=0)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_reads_module_layout_and_shards(tmp_path):
    """transformers 5's module names (`model.vision_tower.*`, `model.language_model.*`,
    `model.multi_modal_projector.*`, top-level `lm_head`) in a sharded folder load the same model
    as the hub layout (`vision_tower.*` without `vision_model.`, `language_model.lm_head`)."""
    hb.assert_module_layout_loads(internvl_hf(), tmp_path)
    hub_keys = SafetensorsReader(tmp_path / "hub").keys()
    assert "language_model.lm_head.weight" in hub_keys and any(k.startswith("vision_tower.embeddings") for k in hub_keys)


@pytest.mark.parametrize("tie_top,tie_text", [(True, False), (False, True)])
def test_tied_head_follows_the_top_level(tmp_path, tie_top, tie_text):
    """InternVLForConditionalGeneration ties its head by the top-level tie_word_embeddings alone
    (the text sub-model has no head), so text_config's value is ignored, by both."""
    hf = internvl_hf(tie=tie_top)
    hf.config.text_config.tie_word_embeddings = tie_text
    hf = hb.randomize(tf.InternVLForConditionalGeneration(hf.config))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    assert ours.cfg.text.tie_embeddings is tie_top
    assert ("language_model.lm_head.weight" in SafetensorsReader(tmp_path).keys()) is not tie_top
    ids, _, pix = _batch([(1,), (2,)])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix), hf(input_ids=ids, pixel_values=pix).logits, atol=ATOL, rtol=0)


def test_bf16(tmp_path):
    """bf16 logits against transformers in bf16. Measured: bit-identical (max |diff| 0)."""
    internvl_hf().save_pretrained(tmp_path)
    hf = tf.InternVLForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    ids, _, pix = _batch([(3, 1), (1, 3)])
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix.bfloat16()).logits
        got = ours(ids, pix.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


@pytest.mark.parametrize("layer", [-2, 1, 3])
def test_feature_layer(tmp_path, layer):
    """vision_feature_layer other than -1 reads the un-normed block output (index 3 = the last
    block, which differs from -1 when the tower has a final norm), end to end. Layer 0 (the
    embeddings) is not compared: transformers 5.24 passes it on as `output_hidden_states=0`,
    which is falsy, and fails to collect any hidden state."""
    hf = internvl_hf("6b-switches", vision_feature_layer=layer)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    assert ours.cfg.features.vision_feature_layer == layer
    ids, _, pix = _batch([(2,), (1,)])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, pix), hf(input_ids=ids, pixel_values=pix).logits, atol=ATOL, rtol=0)
    if layer == 3:
        default = load_hf(tmp_path, dtype="float32")
        default.cfg.features.vision_feature_layer = -1
        with torch.no_grad():
            assert not torch.allclose(default(ids, pix), ours(ids, pix))


def test_pixel_shuffle_matches_transformers():
    """The shared connector's space-to-depth equals InternVLModel.pixel_shuffle (grid layout)."""
    hf = internvl_hf()
    x = torch.randn(3, 64, 5)  # 3 tiles, an 8x8 grid, 5 channels
    ref = hf.model.pixel_shuffle(x.reshape(3, 8, 8, 5), scale_factor=0.5).reshape(3, 16, 20)
    assert torch.equal(pixel_shuffle(x, 2), ref)


def test_config_errors(tmp_path):
    hf = internvl_hf()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value, match in [("vision_feature_layer", [-1, -2], "one vision_feature_layer"),
                              ("vision_feature_select_strategy", "full", "strategy 'default'"),
                              ("downsample_ratio", 0.4, "downsample_ratio 0.4")]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointError, match=match) as e:
            load_hf(tmp_path)
        assert "\n" not in str(e.value)


def test_presets_and_parameter_count():
    """internvl3-1b-hf on the meta device: 938,193,024 parameters (the hub's 938M for
    OpenGVLab/InternVL3-1B-hf: 304.0M tower, 4.48M connector, 629.7M decoder with its untied head)."""
    cfg = InternVLConfig.from_preset("internvl3-1b-hf")
    assert cfg.num_image_tokens == 256 and cfg.image_token_id == 151667
    with torch.device("meta"):
        big = InternVL(cfg)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in big.named_children()}
    assert parts == {"vision_tower": 304_012_288, "projector": 4_482_816, "language_model": 629_697_920}
    assert sum(parts.values()) == 938_193_024
    assert tuple(big.projector.linear_1.weight.shape) == (896, 4096)
    hf_cfg = get_family("internvl").config_to_hf(cfg)
    assert hf_cfg["image_seq_length"] == 256 and hf_cfg["downsample_ratio"] == 0.5
    debug = InternVL(InternVLConfig.from_preset("debug"))
    assert debug.cfg.num_image_tokens == 4
    with torch.no_grad():
        feats = debug.encode_images(torch.randn(3, 3, 32, 32))
    assert feats.shape == (3, 4, debug.cfg.text.hidden_size)



def test_pipeline_through_the_registry(family_tokenizer_dir, tmp_path, rng_image):
    """A folder with tokenizer and image-processor files runs through `Pipeline.load` (the family
    record's processor builder and generation adapter): greedy tokens equal transformers' generate
    on the same processed batch (two prompts, one and two images, tiled with thumbnails)."""
    import shutil

    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.pipeline import Pipeline

    tok = Tokenizer.from_folder(family_tokenizer_dir)
    vision = tf.InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=32, patch_size=8, attention_bias=True)
    text = tf.Qwen2Config(vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_id,
                          bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    hf = hb.randomize(tf.InternVLForConditionalGeneration(tf.InternVLConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=tok.token_to_id("<IMG_CONTEXT>"),
        image_seq_length=PER_TILE, tie_word_embeddings=False)))
    folder = tmp_path / "model"
    hf.save_pretrained(folder)
    for f in family_tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    fam = get_family("internvl")
    pre = {**fam.preprocessor_config(load_hf(folder).cfg), "max_patches": 4}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    pipe = Pipeline.load(folder, dtype="float32")
    prompts = ["<IMG_CONTEXT>\nwhat is it?", "<IMG_CONTEXT> and <IMG_CONTEXT> compare"]
    images = [[rng_image(40, 90, seed=1)], [rng_image(50, 50, seed=2), rng_image(90, 30, seed=3)]]
    batch = pipe.processor(prompts, images, padding_side="left")
    assert batch["num_patches"].tolist() == [3, 5, 4] and batch["attention_mask"][0, 0] == 0
    hf.generation_config.pad_token_id = tok.pad_id
    with torch.no_grad():
        ref = hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          pixel_values=batch["pixel_values"], max_new_tokens=8, do_sample=False)
    out = pipe.generate_batch(prompts, images, SamplingConfig(max_new_tokens=8))
    assert all(r.token_ids for r in out)
    assert [r.token_ids for r in out] == ref[:, batch["input_ids"].shape[1]:].tolist()
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_length": 256}))
    with pytest.raises(CheckpointError, match=r"processor tiles 32x32 with 256 tokens each, the model 32x32 with 4$"):
        fam.build_processor(folder, tok, pipe.model.cfg)


def test_strict_loading_names_missing_and_unexpected_keys(tmp_path):
    internvl_hf().save_pretrained(tmp_path / "hub")
    reader = SafetensorsReader(tmp_path / "hub")
    tensors = {k: reader.get(k) for k in reader.keys() if k != "multi_modal_projector.layer_norm.weight"}
    tensors["vision_tower.embeddings.mask_token"] = torch.zeros(1, 1, 32)
    (tmp_path / "bad").mkdir()
    write_state_dict(tensors, tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing keys: projector\.layer_norm\.weight; "
                                              r"unexpected keys: vision_tower\.embeddings\.mask_token$") as e:
        load_hf(tmp_path / "bad")
    assert "\n" not in str(e.value)


def test_create_info_load_and_run(family_tokenizer_dir, tmp_path, rng_image):
    """`vlmkit create --family internvl` with a tokenizer that has InternVL's image tokens: info per
    part, load, save -> load bit-identical, and the pipeline answers a tiled image."""
    from vlmkit.pipeline import Pipeline
    from vlmkit.weights.create import create_checkpoint
    from vlmkit.weights.info import model_info

    folder = create_checkpoint(tmp_path / "m", "debug", seed=1, family="internvl", tokenizer_dir=family_tokenizer_dir)
    info = model_info(folder)
    assert info["family"] == "internvl"
    assert {k for k in info if k.startswith("params.")} == {"params.total", "params.vision_tower", "params.projector",
                                                             "params.language_model"}
    model = load_hf(folder, dtype="float32")
    again = load_hf(save_hf(model, tmp_path / "again"), dtype="float32")
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    pipe = Pipeline.load(folder, dtype="float32")
    out = pipe.generate("<IMG_CONTEXT>\ndescribe", rng_image(30, 70, seed=4), SamplingConfig(max_new_tokens=3))
    assert len(out.token_ids) >= 1
