"""Logit parity with transformers on tiny random configs, both load directions (fp32, CPU)."""

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from vlmkit.weights.hf import load_hf, save_hf

ATOL = 1e-5


def _ids(batch, length, seed=1, low=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, hb.IMAGE_TOKEN, (batch, length), generator=g)


def test_siglip_vision(tmp_path):
    hf = hb.randomize(tf.SiglipVisionModel(hb.siglip_vision_cfg()))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        feats = ours(x)
        torch.testing.assert_close(feats, ref.last_hidden_state, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours.pool(feats), ref.pooler_output, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_gemma_causal_lm(tmp_path, version):
    cls = tf.GemmaForCausalLM if version == 1 else tf.Gemma2ForCausalLM
    hf = hb.randomize(cls(hb.gemma_cfg(version)))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids = _ids(2, 12)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        pos = torch.arange(12)[None].expand(2, -1)
        h = ours(ours.embed(ids), pos, mask.bool(), torch.zeros_like(mask, dtype=torch.bool))
        torch.testing.assert_close(ours.logits(h), ref, atol=ATOL, rtol=1e-5)


def _pg_inputs(hf_model, batch=2, text_len=7, seed=1, suffix_len=3):
    n_img = hf_model.config.vision_config.image_size // hf_model.config.vision_config.patch_size
    n_img = n_img**2
    ids = torch.cat([torch.full((batch, n_img), hb.IMAGE_TOKEN), _ids(batch, text_len, seed)], 1)
    tt = torch.zeros_like(ids)
    tt[:, -suffix_len:] = 1
    mask = torch.ones_like(ids)
    mask[0, :0] = 0
    pix = torch.randn(batch, 3, hf_model.config.vision_config.image_size, hf_model.config.vision_config.image_size,
                      generator=torch.Generator().manual_seed(seed))
    return ids, tt, mask, pix


@pytest.mark.parametrize("version,image_size", [(1, 32), (2, 16), (2, 32), (2, 48)])
def test_paligemma_logits(tmp_path, version, image_size):
    hf = hb.paligemma(version, image_size)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids, tt, mask, pix = _pg_inputs(hf)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt).logits
        got = ours(ids, pix, mask, tt)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_left_padding(tmp_path, version):
    """A left-padded row gives the same logits at its tokens as the reference with the same mask."""
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids, tt, mask, pix = _pg_inputs(hf)
    ids = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], 1)
    tt = torch.cat([torch.zeros(2, 3, dtype=torch.long), tt], 1)
    mask = torch.cat([torch.tensor([[0, 0, 0], [1, 1, 1]]), mask], 1)
    ids[1, :3] = 5
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt).logits
        got = ours(ids, pix, mask, tt)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_roundtrip_ours_to_hf(tmp_path, version):
    """Our save -> transformers load gives the same logits; ours -> HF -> ours is bit-identical."""
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf", dtype="float32")
    save_hf(ours, tmp_path / "ours")
    hf2 = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, tt, mask, pix = _pg_inputs(hf)
    with torch.no_grad():
        a = hf2(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt).logits
        b = ours(ids, pix, mask, tt)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)
    hf2.save_pretrained(tmp_path / "hf2")
    again = load_hf(tmp_path / "hf2", dtype="float32")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_bf16_bit_identical(tmp_path, version):
    """In bf16 our logits equal transformers' bit for bit (same op order, fp32 RoPE and norms)."""
    hb.paligemma(version, 32).save_pretrained(tmp_path)
    hf = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    ids, tt, mask, pix = _pg_inputs(hf)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix.bfloat16(), attention_mask=mask, token_type_ids=tt).logits
        got = ours(ids, pix.bfloat16(), mask, tt)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_multi_image_prompt(tmp_path, version):
    """Two images in one prompt (their <image> blocks back to back, as PaLI-3 feeds video frames)."""
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    g = torch.Generator().manual_seed(5)
    ids = torch.cat([torch.full((2, 32), hb.IMAGE_TOKEN), _ids(2, 6, seed=5)], 1)  # 2 x 16 patches
    tt = torch.zeros_like(ids)
    tt[:, -2:] = 1
    pix = torch.randn(4, 3, 32, 32, generator=g)  # prompt 0: images 0, 1; prompt 1: images 2, 3
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, token_type_ids=tt, attention_mask=torch.ones_like(ids)).logits
        got = ours(ids, pix, torch.ones_like(ids), tt)
        swapped = ours(ids, pix[[1, 0, 3, 2]], torch.ones_like(ids), tt)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got, swapped)  # image order matters
