"""Logit parity with transformers on tiny random configs, both load directions (fp32, CPU).

Exact (torch.equal) wherever it holds; the tolerances left name their measured maximum and cause.
The numbers are in docs/paligemma.md ("Measured parity").
"""

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from vlmkit.weights.hf import load_hf, save_hf

def _ids(batch, length, seed=1, low=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, hb.IMAGE_TOKEN, (batch, length), generator=g)


def _pg_forward(hf, ours, ids, pix, mask, tt, hf_positions=True):
    """Logits of both at the real (non-padding) tokens, [n_valid, V]; transformers gets the
    positions its own generate() would use unless hf_positions=False."""
    kw = {"position_ids": hb.generate_positions(mask)} if hf_positions else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, attention_mask=mask, token_type_ids=tt, **kw).logits
        got = ours(ids, pix, mask, tt)
    valid = mask.bool()
    return got[valid], ref[valid]


def _ours_with_slot_positions(ours, ids, pix, mask, tt):
    """vlmkit's logits at the real tokens [n_valid, V] with transformers' forward default
    positions 1..T (padding slots counted), through the decoder directly."""
    valid = mask.bool()
    with torch.no_grad():
        x = ours.embed_inputs(ids, ours.encode_images(pix))
        h = ours.language_model(x, torch.arange(1, ids.shape[1] + 1).expand_as(ids), valid, valid & (tt == 0))
        return ours.language_model.logits(h)[valid]


def test_siglip_vision(tmp_path):
    hf = hb.randomize(tf.SiglipVisionModel(hb.siglip_vision_cfg()))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(pixel_values=x)
        feats = ours(x)
        assert torch.equal(feats, ref.last_hidden_state)
        # Exact because the MAP head calls nn.MultiheadAttention as transformers does (default
        # need_weights=True, the explicit-softmax path; need_weights=False was 1.8e-7 off).
        assert torch.equal(ours.pool(feats), ref.pooler_output)


@pytest.mark.parametrize("version", [1, 2])
def test_gemma_causal_lm(tmp_path, version):
    """Row 0 left-padded by 3; both get the same (padding-aware, 0-based) positions."""
    cls = tf.GemmaForCausalLM if version == 1 else tf.Gemma2ForCausalLM
    hf = hb.randomize(cls(hb.gemma_cfg(version)))
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids = _ids(2, 12)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    pos = hb.generate_positions(mask) - 1  # Gemma's positions are 0-based
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        h = ours(ours.embed(ids), pos, mask.bool(), torch.zeros_like(mask, dtype=torch.bool))
        got = ours.logits(h)
    assert torch.equal(got[mask.bool()], ref[mask.bool()])


@pytest.mark.parametrize("version,image_size", [(1, 32), (2, 16), (2, 32), (2, 48)])
def test_paligemma_logits(tmp_path, version, image_size):
    """A left-padded batch of two prompts: bit-identical at every real token."""
    hf = hb.paligemma(version, image_size)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids, tt, mask, pix = hb.paligemma_inputs(hf)
    got, ref = _pg_forward(hf, ours, ids, pix, mask, tt)
    assert torch.equal(got, ref)


# Batched row 0 vs the same prompt alone (vlmkit, fp32). Gemma 2 attends through the explicit
# soft-capped path: exact. Gemma 1 uses SDPA, whose CPU kernel blocks the 2 extra (masked) key
# slots differently: measured max 2.6e-6.
ALONE_ATOL = {1: 5e-6, 2: 0.0}


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_padded_row_positions(tmp_path, version):
    """The one deviation: positions of a left-padded row in a plain forward.

    vlmkit numbers a padded row's tokens from 1 (as transformers' generate does), so the row is the
    same prompt as run alone; transformers' forward without position_ids numbers the slots 1..T,
    padding included. RoPE only sees relative offsets, so the two differ by rounding only:
    measured max 6.0e-6 in fp32 (logits ~5; 0.125 in bf16, see the bf16 test). Given 1..T,
    vlmkit's decoder equals transformers' forward bit for bit.
    """
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    ids, tt, mask, pix = hb.paligemma_inputs(hf)
    got, ref = _pg_forward(hf, ours, ids, pix, mask, tt, hf_positions=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert torch.equal(_ours_with_slot_positions(ours, ids, pix, mask, tt), ref)
    with torch.no_grad():
        batched = ours(ids, pix, mask, tt)[0, 2:]
        alone = ours(ids[:1, 2:], pix[:1], mask[:1, 2:], tt[:1, 2:])[0]
    torch.testing.assert_close(batched, alone, atol=ALONE_ATOL[version], rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_roundtrip_ours_to_hf(tmp_path, version):
    """Our save -> transformers load gives the same logits; ours -> HF -> ours is bit-identical."""
    hf = hb.paligemma(version, 32)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf", dtype="float32")
    save_hf(ours, tmp_path / "ours")
    hf2 = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, tt, mask, pix = hb.paligemma_inputs(hf)
    got, ref = _pg_forward(hf2, ours, ids, pix, mask, tt)
    assert torch.equal(got, ref)
    hf2.save_pretrained(tmp_path / "hf2")
    again = load_hf(tmp_path / "hf2", dtype="float32")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("version", [1, 2])
def test_paligemma_bf16_bit_identical(tmp_path, version):
    """In bf16 (transformers loaded with from_pretrained(dtype=bfloat16), RoPE frequencies in fp32)
    a left-padded batch is bit-identical given the same positions: transformers' generate
    positions, or 1..T in both. Across the two numberings a padded row differs by up to 0.125
    (measured; logits ~5): bf16 rounding of differently rotated q/k, not a bug."""
    hb.paligemma(version, 32).save_pretrained(tmp_path)
    hf = tf.PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    ids, tt, mask, pix = hb.paligemma_inputs(hf)
    pix = pix.bfloat16()
    got, ref = _pg_forward(hf, ours, ids, pix, mask, tt)
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    _, ref_1_to_T = _pg_forward(hf, ours, ids, pix, mask, tt, hf_positions=False)
    assert torch.equal(_ours_with_slot_positions(ours, ids, pix, mask, tt), ref_1_to_T)


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
    assert torch.equal(got, ref)
    assert not torch.allclose(got, swapped)  # image order matters
