"""LLaVA-NeXT parity with transformers' LlavaNextForConditionalGeneration (tiny random configs, fp32,
CPU): packed image features, logits for images of different aspect ratios (different tile grids and
unpadding), a left-padded batch, greedy generation through vlmkit's engine, the processor end to
end, both weight directions, bf16, and the published v1.6-mistral-7b shapes.

Two text models: Mistral (v1.6-mistral's decoder) and Llama (v1.6-vicuna's).
"""

import json
from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from tests.parity.llava_builders import clip_vision_cfg, llama_cfg
from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.llava_next import LlavaNext, LlavaNextConfig
from vlmkit.models.llava_next import hf_mapping
from vlmkit.models.parts.anyres import unpadded_window
from vlmkit.models.registry import family_of, get_family
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.safetensors_io import write_state_dict

# Measured: 0.0 (bit-identical) for every fp32 comparison below, both decoders; the tolerance only
# absorbs a different BLAS on another machine.
ATOL = 1e-5
PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # 32-px tiles: grids 1 x 2, 2 x 1, 2 x 2
# (height, width): rows cut (wide within 2 x 2), columns cut (tall), 1 x 2 with rows cut, square.
SIZES = [(50, 75), (150, 20), (12, 200), (40, 40)]


def mistral_cfg():
    return tf.MistralConfig(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=None,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2)


TEXT_CASES = [pytest.param(mistral_cfg, id="mistral"), pytest.param(llama_cfg, id="llama")]


def llava_next(text_cfg, seed=0, vocab=None, image_token=hb.IMAGE_TOKEN, **kw):
    text = text_cfg().to_dict()
    if vocab is not None:
        text["vocab_size"] = vocab
    cfg = tf.LlavaNextConfig(vision_config=clip_vision_cfg().to_dict(), text_config=text,
                             image_token_index=image_token, image_grid_pinpoints=PINPOINTS, **kw)
    return hb.randomize(tf.LlavaNextForConditionalGeneration(cfg), seed)


def _images(cfg: LlavaNextConfig, sizes, seed):
    """pixel_values [M, K_max, 3, 32, 32] (tiles past an image's own count zero, as the processor
    pads them) and image_sizes [M, 2]."""
    g = torch.Generator().manual_seed(seed)
    counts = [cfg.num_tiles(h, w) for h, w in sizes]
    pix = torch.randn(len(sizes), max(counts), 3, 32, 32, generator=g)
    for i, k in enumerate(counts):
        pix[i, k:] = 0
    return pix, torch.tensor(sizes, dtype=torch.long)


def _prompt(cfg: LlavaNextConfig, sizes, seed, text_len=5):
    """[1, T] ids: 2 text tokens, then per image its placeholders and `text_len` text tokens."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(3, hb.IMAGE_TOKEN, (2,), generator=g)]
    for h, w in sizes:
        parts += [torch.full((cfg.tokens_for(h, w),), hb.IMAGE_TOKEN),
                  torch.randint(3, hb.IMAGE_TOKEN, (text_len,), generator=g)]
    return torch.cat(parts)[None]


def _left_padded(rows, pad_id=0):
    """Left-pad [1, T_i] rows into ids, attention_mask [B, T] and generate's positions."""
    longest = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, longest - r.shape[1]:], mask[b, longest - r.shape[1]:] = r[0], 1
    return ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@pytest.fixture
def pair(tmp_path, request):
    hf = llava_next(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return hf, load_hf(tmp_path / "hf", dtype="float32")


def test_sizes_cover_every_case():
    """The probe sizes really exercise every grid and both unpadding directions."""
    cfg = LlavaNextConfig.from_preset("debug")
    grids = [cfg.tile_grid(h, w) for h, w in SIZES]
    assert set(grids) == {(1, 2), (2, 1), (2, 2)}
    g = cfg.grid_side
    windows = [unpadded_window(h, w, gh * g, gw * g) for (h, w), (gh, gw) in zip(SIZES, grids)]
    assert any(top for top, *_ in windows) and any(left for _, left, *_ in windows)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_packed_features(pair):
    """Tower + selection + projector per tile, then base / grid / unpadding / image_newline:
    ours equal transformers' pooler_output per image, lengths equal to the token expansion."""
    hf, ours = pair
    assert type(ours) is LlavaNext and family_of(ours).name == "llava_next"
    pix, sizes = _images(ours.cfg, SIZES, seed=1)
    with torch.no_grad():
        ref = hf.model.get_image_features(pix, sizes).pooler_output
        got = ours.encode_images(pix, sizes)
    assert [r.shape[0] for r in ref] == [ours.cfg.tokens_for(h, w) for h, w in SIZES]
    torch.testing.assert_close(got, torch.cat(ref), atol=0, rtol=0)


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_logits_images_of_every_aspect(pair):
    """One prompt holding four images of different aspect ratios."""
    hf, ours = pair
    pix, sizes = _images(ours.cfg, SIZES, seed=2)
    ids = _prompt(ours.cfg, SIZES, seed=3)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, image_sizes=sizes).logits
        got = ours(ids, pix, image_sizes=sizes)
        flipped = ours(ids, pix.flip(-1), image_sizes=sizes)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(got, flipped)  # the pixels matter


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_left_padded_batch(pair):
    """2 prompts with different images (so different lengths), left-padded: logits at real tokens
    equal the reference's with the same mask and positions, and each row equals it alone."""
    hf, ours = pair
    per_row = [[SIZES[0]], [SIZES[2]]]
    pix, sizes = _images(ours.cfg, [s for r in per_row for s in r], seed=4)
    rows = [_prompt(ours.cfg, r, seed=5 + i) for i, r in enumerate(per_row)]
    ids, mask, pos = _left_padded(rows)
    assert (mask == 0).any()
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, image_sizes=sizes, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, pix, mask, image_sizes=sizes)
        alone = [ours(r, pix[i:i + 1], image_sizes=sizes[i:i + 1])[0] for i, r in enumerate(rows)]
    valid = mask.bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=ATOL, rtol=1e-5)
    for b, a in enumerate(alone):
        torch.testing.assert_close(got[b, -a.shape[0]:], a, atol=ATOL, rtol=1e-5)


class IdTokenizer:
    eos_id = -1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_greedy_generation(pair):
    """vlmkit's engine with the family's adapter (PlaceholderGeneration, which hands image_sizes
    to the model) on a left-padded batch of 2 prompts with different images."""
    hf, ours = pair
    per_row = [[SIZES[1]], [SIZES[3], SIZES[0]]]
    pix, sizes = _images(ours.cfg, [s for r in per_row for s in r], seed=7)
    ids, mask, _ = _left_padded([_prompt(ours.cfg, r, seed=8 + i) for i, r in enumerate(per_row)])
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, pixel_values=pix, image_sizes=sizes, attention_mask=mask,
                          max_new_tokens=12, do_sample=False)[:, ids.shape[1]:]
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=pix, image_sizes=sizes)
    out = generate(ours, IdTokenizer(), batch, SamplingConfig(max_new_tokens=12))
    assert [r.token_ids for r in out] == ref.tolist()


@pytest.mark.parametrize("pair", TEXT_CASES, indirect=True)
def test_roundtrip(pair, tmp_path):
    """HF -> ours is strict (load_hf) and equal (logits above); ours -> HF loads strictly in
    transformers with every tensor equal and equal logits; ours -> HF -> ours is bit-identical."""
    hf, ours = pair
    save_hf(ours, tmp_path / "ours")
    hf2, info = tf.LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    assert hf2.state_dict().keys() == hf_sd.keys()
    for k, v in hf2.state_dict().items():
        assert torch.equal(v, hf_sd[k]), k
    pix, sizes = _images(ours.cfg, SIZES[:2], seed=9)
    ids = _prompt(ours.cfg, SIZES[:2], seed=10)
    with torch.no_grad():
        torch.testing.assert_close(hf2.eval()(input_ids=ids, pixel_values=pix, image_sizes=sizes).logits,
                                   ours(ids, pix, image_sizes=sizes), atol=ATOL, rtol=1e-5)
    again = load_hf(tmp_path / "ours", dtype="float32")
    assert again.cfg == ours.cfg
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_reads_transformers5_module_names(tmp_path):
    """transformers 5's own names (`model.image_newline`, `model.language_model.*`, top-level
    `lm_head`), sharded, load to the same model as the hub layout."""
    hf = llava_next(mistral_cfg)
    hf.save_pretrained(tmp_path / "hub")
    sd = hf.state_dict()
    assert "model.image_newline" in sd and "lm_head.weight" in sd
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "config.json").write_text((tmp_path / "hub" / "config.json").read_text())
    write_state_dict(sd, tmp_path / "mod", max_shard_bytes=20_000)
    a, b = load_hf(tmp_path / "hub", dtype="float32"), load_hf(tmp_path / "mod", dtype="float32")
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert torch.equal(a.image_newline, sd["model.image_newline"])


def test_bf16_bit_identical(tmp_path):
    """In bf16 our logits equal transformers' bit for bit (measured max |diff| 0.0)."""
    llava_next(mistral_cfg).save_pretrained(tmp_path)
    hf = tf.LlavaNextForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ours = load_hf(tmp_path, dtype="bfloat16")
    pix, sizes = _images(ours.cfg, SIZES, seed=11)
    ids = _prompt(ours.cfg, SIZES, seed=12)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix.bfloat16(), image_sizes=sizes).logits
        got = ours(ids, pix.bfloat16(), image_sizes=sizes)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
