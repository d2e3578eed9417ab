"""SigLIP 2 NaFlex parity with transformers' Siglip2Model / Siglip2Processor (fp32, CPU, offline).

Measured on the tiny config below, 7 images of different sizes (max abs differences): vision features
2.4e-7, image embeddings 6.0e-8, logits_per_image 3.0e-8 (padded) / 6.0e-8 (packed), text
embeddings 0; packed vs padded image embeddings 0 / 7.5e-8 / 8.9e-8 for 1 / 3 / 7 images; the
processor's pixel values, masks and spatial shapes and the caption ids are bit-identical. The vision differences come from the position resize:
we call F.interpolate(bilinear, antialias=True), transformers 5.24 spells the same filter out as a
weight matrix (another summation order).
"""

import json

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

from tests.parity import hf_builders as hb
from vlmkit.data.processors.siglip2 import Siglip2Processor, Siglip2ProcessorConfig, size_for_max_patches
from vlmkit.models.registry import get_family
from vlmkit.models.siglip2 import Siglip2Config, Siglip2TwoTower
from vlmkit.models.siglip2 import hf_mapping
from vlmkit.models.siglip2.model import resize_positions, unpad_patches
from vlmkit.weights.create import create_checkpoint
from vlmkit.weights.hf import load_hf, save_hf

TEXT_LEN, PATCH, GRID = 16, 4, 4  # 4-px patches, a 4 x 4 position table
MAX_PATCHES = 24
ATOL = 1e-5
SIZES = [(40, 56), (17, 90), (90, 17), (3, 3), (32, 32), (20, 64), (50, 33)]


def _hf_model(seed: int = 0) -> tf.Siglip2Model:
    text = tf.Siglip2TextConfig(vocab_size=hb.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=TEXT_LEN, pad_token_id=1,
                                bos_token_id=2, eos_token_id=3)
    vision = tf.Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    patch_size=PATCH, num_patches=GRID * GRID)
    cfg = tf.Siglip2Config(text_config=text.to_dict(), vision_config=vision.to_dict())
    return hb.randomize(tf.Siglip2Model(cfg), seed)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = _hf_model()
    folder = tmp_path_factory.mktemp("siglip2") / "hf"
    hf.save_pretrained(folder)
    ours = load_hf(folder, dtype="float32").eval()
    assert isinstance(ours, Siglip2TwoTower)
    return hf, ours


def _images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _pixels(images, max_patches: int = MAX_PATCHES, packed: bool = False) -> dict:
    cfg = Siglip2ProcessorConfig(patch_size=PATCH, max_num_patches=max_patches)
    return Siglip2Processor(cfg).images(images, packed=packed)


def _text(seed: int = 1, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, hb.VOCAB, (n, TEXT_LEN), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:], ids[1, 9:] = 0, 1  # one caption with padding
    return ids, mask


@pytest.mark.parametrize("patch, max_patches", [(8, 16), (16, 256), (14, 64)])
def test_processor_equals_transformers(patch, max_patches):
    images = _images([(40, 56), (17, 300), (300, 17), (5, 5), (224, 224), (64, 200), (500, 333)])
    ref = Siglip2ImageProcessorPil(patch_size=patch, max_num_patches=max_patches)(images, return_tensors="pt")
    ours = Siglip2Processor(Siglip2ProcessorConfig(patch_size=patch, max_num_patches=max_patches)).images(images)
    assert set(ours) == set(ref.keys())
    for key in ref:
        assert ours[key].dtype == ref[key].dtype and torch.equal(ours[key], ref[key]), key
    assert (ours["spatial_shapes"].prod(-1) <= max_patches).all()
    assert size_for_max_patches(40, 56, 8, 16) == (24, 40)  # docs/siglip2.md's worked example
    packed = Siglip2Processor(Siglip2ProcessorConfig(patch_size=patch, max_num_patches=max_patches)).images(
        images, packed=True)
    assert torch.equal(packed["pixel_values"], unpad_patches(ref["pixel_values"], ref["pixel_attention_mask"]))


def test_captions_equal_transformers(tmp_path):
    """Lowercased, truncated and padded to 64 as Siglip2Processor does, from a hub-style
    tokenizer.json without the Lowercase normaliser (transformers adds it when loading)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz▁")})
    vocab.update({f"<0x{i:02X}>": len(vocab) + i for i in range(256)})
    tf.Siglip2Tokenizer(vocab=vocab, merges=[]).save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    texts = ["A Photo of a CAT", "x", "a b c " * 30, ""]
    tok = tf.AutoTokenizer.from_pretrained(tmp_path)
    ref = tf.Siglip2Processor(image_processor=Siglip2ImageProcessorPil(), tokenizer=tok)(text=texts, return_tensors="pt")
    ours = Siglip2Processor.from_folder(tmp_path)(texts)
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["attention_mask"], ref["attention_mask"])


def test_position_resize_equals_transformers():
    table = torch.randn(GRID * GRID, 32, generator=torch.Generator().manual_seed(0))
    shapes = torch.tensor([[1, 1], [2, 7], [4, 4], [9, 3], [6, 6]])
    ref = tf.models.siglip2.modeling_siglip2.Siglip2VisionEmbeddings.resize_positional_embeddings(
        table.reshape(GRID, GRID, -1), shapes, max_length=36)
    for i, (h, w) in enumerate(shapes.tolist()):
        torch.testing.assert_close(resize_positions(table, h, w), ref[i, :h * w], atol=1e-6, rtol=0)


def test_embeddings_and_logits_equal_transformers(pair):
    hf, ours = pair
    batch = _pixels(_images())
    ids, mask = _text()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, **batch)
        got = ours(batch["pixel_values"], ids, mask, spatial_shapes=batch["spatial_shapes"],
                   pixel_attention_mask=batch["pixel_attention_mask"])
        feats = ours.vision_tower(batch["pixel_values"], batch["spatial_shapes"], batch["pixel_attention_mask"])
    torch.testing.assert_close(feats, ref.vision_model_output.last_hidden_state, atol=ATOL, rtol=0)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=ATOL, rtol=0, msg=name)
    assert torch.equal(got.text_embeds, ref.text_embeds)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_packed_equals_padded(pair, n):
    _, ours = pair
    images = _images(SIZES[:n], seed=n)
    padded, packed = _pixels(images), _pixels(images, packed=True)
    with torch.no_grad():
        a = ours.encode_image(padded["pixel_values"], padded["spatial_shapes"], padded["pixel_attention_mask"])
        b = ours.encode_image(packed["pixel_values"], packed["spatial_shapes"])
        fa = ours.vision_tower(padded["pixel_values"], padded["spatial_shapes"], padded["pixel_attention_mask"])
        fb = ours.vision_tower(packed["pixel_values"], packed["spatial_shapes"])
    assert b.shape == (n, ours.cfg.embed_dim)
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    torch.testing.assert_close(fb[0], unpad_patches(fa, padded["pixel_attention_mask"]), atol=ATOL, rtol=0)


def test_packed_mask_is_block_diagonal(pair):
    """Changing one image's pixels changes its own features only."""
    _, ours = pair
    packed = _pixels(_images(SIZES[:4]), packed=True)
    lengths = packed["spatial_shapes"].prod(-1).tolist()
    changed = packed["pixel_values"].clone()
    start = lengths[0]
    changed[start:start + lengths[1]] += 1.0  # image 1 only
    with torch.no_grad():
        before = torch.split(ours.vision_tower(packed["pixel_values"], packed["spatial_shapes"])[0], lengths)
        after = torch.split(ours.vision_tower(changed, packed["spatial_shapes"])[0], lengths)
        pooled = ours.encode_image(packed["pixel_values"], packed["spatial_shapes"])
        pooled_after = ours.encode_image(changed, packed["spatial_shapes"])
    for i, (x, y) in enumerate(zip(before, after)):
        assert torch.equal(x, y) == (i != 1), i
    assert [torch.equal(pooled[i], pooled_after[i]) for i in range(4)] == [True, False, True, True]


def test_round_trips(pair, tmp_path):
    """Our save -> transformers strict load -> same outputs; ours -> HF -> ours bit-identical."""
    _, ours = pair
    save_hf(ours, tmp_path / "ours")
    hf2, info = tf.Siglip2Model.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = _pixels(_images(SIZES[:3]))
    ids, mask = _text()
    with torch.no_grad():
        ref = hf2.eval()(input_ids=ids, attention_mask=mask, **batch)
        got = ours(batch["pixel_values"], ids, mask, spatial_shapes=batch["spatial_shapes"],
                   pixel_attention_mask=batch["pixel_attention_mask"])
    torch.testing.assert_close(got.logits_per_image, ref.logits_per_image, atol=ATOL, rtol=0)
    hf2.save_pretrained(tmp_path / "hf2")
    again = load_hf(tmp_path / "hf2", dtype="float32")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_and_unexpected_keys_are_one_line(pair, tmp_path):
    from safetensors.torch import load_file, save_file

    from vlmkit.errors import CheckpointError

    hf, _ = pair
    hf.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["vision_model.extra.weight"] = weights.pop("vision_model.post_layernorm.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="post_layernorm.weight") as e:
        load_hf(tmp_path, dtype="float32")
    assert "vision_model.extra.weight" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("preset", ["siglip2-base-patch16-naflex", "siglip2-so400m-patch16-naflex"])
def test_preset_parameter_counts_equal_transformers(preset):
    cfg = get_family("siglip2").preset(preset)
    with torch.device("meta"):
        hf = tf.Siglip2Model(tf.Siglip2Config(**{k: v for k, v in hf_mapping.config_to_hf(cfg).items()
                                                  if k in ("text_config", "vision_config")}))
        ours = Siglip2TwoTower(cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("preset", ["siglip2-base-patch16-224", "siglip2-so400m-patch14-224",
                                    "siglip2-large-patch16-512"])
def test_fixed_resolution_presets_are_siglip_models(preset):
    """The fixed-resolution SigLIP 2 checkpoints are SiglipModel layouts (model_type "siglip")."""
    from vlmkit.models.siglip import hf_mapping as siglip_mapping
    from vlmkit.models.siglip.two_tower import SiglipTwoTower

    spec = get_family("siglip")
    cfg = spec.preset(preset)
    hub = siglip_mapping.config_to_hf(cfg)
    assert hub["model_type"] == "siglip" and cfg.text.vocab_size == 256000 and cfg.text.max_position_embeddings == 64
    with torch.device("meta"):
        hf = tf.SiglipModel(tf.SiglipConfig(text_config=hub["text_config"], vision_config=hub["vision_config"]))
        ours = SiglipTwoTower(cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_create_then_load_in_transformers(tmp_path):
    """`vlmkit create --family siglip2` writes a folder transformers loads strictly, with our
    preprocessor metadata read by its Siglip2 image processor."""
    folder = create_checkpoint(tmp_path / "m", "debug", seed=0, family="siglip2")
    ours = load_hf(folder, dtype="float32")
    assert isinstance(ours.cfg, Siglip2Config)
    hf, info = tf.Siglip2Model.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref = Siglip2ImageProcessorPil.from_pretrained(folder)(_images(SIZES[:2]), return_tensors="pt")
    batch = Siglip2Processor.from_folder(folder, with_tokenizer=False).images(_images(SIZES[:2]))
    assert all(torch.equal(batch[k], ref[k]) for k in ref)


def test_bad_inputs_are_one_line(pair):
    from vlmkit.errors import DataError

    _, ours = pair
    packed = _pixels(_images(SIZES[:2]), packed=True)
    with pytest.raises(ValueError, match=r"patches, but spatial_shapes .* need"):
        ours.encode_image(packed["pixel_values"][:-1], packed["spatial_shapes"])
    padded = _pixels(_images(SIZES[:2]))
    with pytest.raises(ValueError, match="need more than the 24 padded patch rows"):
        ours.encode_image(padded["pixel_values"], torch.tensor([[5, 5], [1, 1]]), padded["pixel_attention_mask"])
    with pytest.raises(ValueError, match="need spatial_shapes"):
        ours.encode_image(packed["pixel_values"])
    with pytest.raises(DataError, match="no images given"):
        Siglip2Processor(Siglip2ProcessorConfig()).images([])
    # An image smaller than one patch is resized up (here to the whole budget), as transformers does.
    tiny = _images([(1, 1), (1, 9)])
    ref = Siglip2ImageProcessorPil(patch_size=PATCH, max_num_patches=MAX_PATCHES)(tiny, return_tensors="pt")
    ours = _pixels(tiny)
    assert ours["spatial_shapes"].tolist() == ref["spatial_shapes"].tolist() == [[4, 4], [2, 12]]
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
