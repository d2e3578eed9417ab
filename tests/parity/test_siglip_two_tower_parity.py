"""SigLIP two-tower parity with transformers' SiglipModel (fp32, CPU), both load directions."""

import json

import pytest
import torch
import transformers as tf

from tests.parity import hf_builders as hb
from vlmkit.errors import CheckpointError
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.two_tower import SiglipTwoTower
from vlmkit.weights.hf import load_hf, save_hf

TEXT_LEN = 16
# Every output is bit-identical: the MAP pooling head calls nn.MultiheadAttention as transformers
# does (need_weights=False took the fused SDPA path: 9.7e-8 on the image embeddings), and the
# similarity matrix is text @ image.T transposed, as there (image @ text.T was 1.9e-6 off on the
# logits at the debug preset's logit_scale 10).


def _hf_siglip(seed: int = 0) -> tf.SiglipModel:
    text = tf.SiglipTextConfig(
        vocab_size=hb.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_LEN, pad_token_id=1, bos_token_id=2,
        eos_token_id=3,
    )
    cfg = tf.SiglipConfig(text_config=text.to_dict(), vision_config=hb.siglip_vision_cfg().to_dict())
    return hb.randomize(tf.SiglipModel(cfg), seed)


def _inputs(vocab: int, seed: int = 1, n_img: int = 3, n_txt: int = 4):
    g = torch.Generator().manual_seed(seed)
    pix = torch.randn(n_img, 3, 32, 32, generator=g)
    ids = torch.randint(4, vocab, (n_txt, TEXT_LEN), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # one caption with right padding
    ids[1, 9:] = 1
    return pix, ids, mask


def _assert_matches(ours: SiglipTwoTower, hf: tf.SiglipModel, with_mask: bool) -> None:
    pix, ids, mask = _inputs(ours.cfg.text.vocab_size)
    kw = {"attention_mask": mask} if with_mask else {}
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pix, **kw)
        got = ours(pix, ids, mask if with_mask else None)
    assert torch.equal(got.text_embeds, ref.text_embeds)
    assert torch.equal(got.image_embeds, ref.image_embeds)
    assert torch.equal(got.logits_per_image, ref.logits_per_image)
    assert torch.equal(got.logits_per_text, ref.logits_per_text)


@pytest.mark.parametrize("with_mask", [False, True])
def test_hf_save_ours_load(tmp_path, with_mask):
    hf = _hf_siglip()
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    assert isinstance(ours, SiglipTwoTower)
    _assert_matches(ours, hf, with_mask)


def test_ours_save_hf_load_and_bit_identical_roundtrip(tmp_path):
    """Our save -> transformers load gives the same outputs; ours -> HF -> ours is bit-identical."""
    _hf_siglip(seed=3).save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf", dtype="float32")
    save_hf(ours, tmp_path / "ours")
    hf2 = tf.SiglipModel.from_pretrained(tmp_path / "ours").eval()
    _assert_matches(ours, hf2, with_mask=True)
    hf2.save_pretrained(tmp_path / "hf2")
    again = load_hf(tmp_path / "hf2", dtype="float32")
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fresh_model_loads_in_transformers(tmp_path):
    """A model built by us (published inits) is read by transformers with every weight present."""
    torch.manual_seed(0)
    ours = SiglipTwoTower(SiglipConfig.from_preset("debug")).eval()
    save_hf(ours, tmp_path)
    hf, info = tf.SiglipModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(hf.logit_scale, ours.logit_scale.detach())
    assert torch.equal(hf.logit_bias, ours.logit_bias.detach())
    _assert_matches(ours, hf.eval(), with_mask=False)


def test_clip_variant_roundtrip_and_strictness(tmp_path):
    """The bias-free CLIP-style variant round-trips through our own loader; a checkpoint with a
    bias does not load into it silently."""
    torch.manual_seed(0)
    clip = SiglipTwoTower(SiglipConfig.from_preset("debug-clip")).eval()
    save_hf(clip, tmp_path / "clip")
    again = load_hf(tmp_path / "clip", dtype="float32")
    assert again.cfg.contrastive_loss == "softmax" and again.logit_bias is None
    for k, v in clip.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    _hf_siglip().save_pretrained(tmp_path / "hf")
    config = tmp_path / "hf" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "contrastive_loss": "softmax"}))
    with pytest.raises(CheckpointError, match="logit_bias"):
        load_hf(tmp_path / "hf", dtype="float32")
