"""SigLIP / CLIP-style two-tower model: embeddings, logits formula, inits, losses, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlmkit.errors import PromptTooLongError
from vlmkit.models.common.init import init_weights
from vlmkit.models.siglip.config import SiglipConfig, SiglipTextConfig
from vlmkit.models.siglip.two_tower import SiglipTwoTower
from vlmkit.training.losses import image_text_loss


def _model(preset="debug", seed=0, **overrides):
    torch.manual_seed(seed)
    model = SiglipTwoTower(SiglipConfig.from_preset(preset, **overrides))
    return init_weights(model, std=0.2, seed=seed).eval()


def _batch(n_img=3, n_txt=5, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_img, 3, 32, 32, generator=g), torch.randint(4, 128, (n_txt, T), generator=g)


def test_embeddings_are_unit_norm_and_shaped():
    model = _model()
    pix, ids = _batch()
    with torch.no_grad():
        img, txt = model.encode_image(pix), model.encode_text(ids)
    assert img.shape == (3, 32) and txt.shape == (5, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(5))
    # Different inputs give different embeddings (the towers are not constant).
    assert (img[0] - img[1]).abs().max() > 1e-3 and (txt[0] - txt[1]).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["debug", "debug-clip"])
def test_logits_are_scaled_cosine_plus_bias(preset):
    model = _model(preset)
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-3.25)
    pix, ids = _batch()
    with torch.no_grad():
        out = model(pix, ids)
        cos = F.normalize(model.vision_tower.pool(model.vision_tower(pix)), dim=-1) @ F.normalize(
            model.text_tower(ids)[1], dim=-1
        ).T
    bias = -3.25 if preset == "debug" else 0.0
    torch.testing.assert_close(out.logits_per_image, math.exp(1.7) * cos + bias)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    assert out.logits_per_image.shape == (3, 5)


def test_published_inits():
    sig, clip = _model("debug"), _model("debug-clip")
    assert sig.logit_scale.item() == pytest.approx(math.log(10)) and sig.logit_bias.item() == -10.0
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07)) and clip.logit_bias is None
    custom = _model("debug", init_logit_scale=0.5, init_logit_bias=-2.0)
    assert custom.logit_scale.item() == 0.5 and custom.logit_bias.item() == -2.0
    # The initial sigmoid logits start near b = -10: nearly every pair predicted a negative.
    pix, ids = _batch(4, 4)
    with torch.no_grad():
        logits = sig(pix, ids).logits_per_image
    assert (logits + 10).abs().max() <= 10 + 1e-4  # |exp(t') * cos| <= 10


def test_losses_match_their_definitions():
    pix, ids = _batch(4, 4)
    sig = _model("debug")
    out = sig(pix, ids)
    z = 2 * torch.eye(4) - 1  # +1 on matching pairs, -1 elsewhere
    expected = -F.logsigmoid(z * out.logits_per_image).sum() / 4
    loss = image_text_loss(sig, out.image_embeds, out.text_embeds).total
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert sig.logit_scale.grad is not None and sig.logit_bias.grad is not None

    clip = _model("debug-clip")
    out = clip(pix, ids)
    labels = torch.arange(4)
    expected = (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels)) / 2
    torch.testing.assert_close(image_text_loss(clip, out.image_embeds, out.text_embeds).total, expected)


def test_attention_mask_hides_padding_keys():
    """With a mask, the embedding does not depend on the tokens hidden behind it (except the
    last position, which the reference pools from)."""
    model = _model()
    _, ids = _batch(1, 2, T=10)
    ids[1] = ids[0]
    ids[1, 5:9] = 7  # different hidden tokens, same last token
    mask = torch.ones_like(ids)
    mask[:, 5:9] = 0
    with torch.no_grad():
        masked = model.encode_text(ids, mask)
        unmasked = model.encode_text(ids)
    torch.testing.assert_close(masked[0], masked[1])
    assert (unmasked[0] - unmasked[1]).abs().max() > 1e-4


def test_errors():
    model = _model()
    with pytest.raises(PromptTooLongError, match="17 text tokens"):
        model.encode_text(torch.zeros(1, 17, dtype=torch.long))
    base = SiglipConfig.from_preset("debug")
    wide_text = SiglipTextConfig(vocab_size=10, hidden_size=32, intermediate_size=8, num_layers=1, num_heads=4,
                                 projection_size=48)
    with pytest.raises(ValueError, match="same width"):
        SiglipConfig(vision=base.vision, text=wide_text)
    with pytest.raises(ValueError, match="no logit bias"):
        SiglipConfig.from_preset("debug-clip", init_logit_bias=-1.0)
    with pytest.raises(ValueError, match="contrastive_loss"):
        SiglipConfig.from_preset("debug", contrastive_loss="hinge")


@pytest.mark.parametrize("preset,params_m", [
    ("base-patch16-224", 203.2), ("large-patch16-256", 652.2), ("so400m-patch14-224", 877.4),
])
def test_presets_match_published_sizes(preset, params_m):
    """Parameter counts of the published SigLIP checkpoints (HF model cards: 203M, 652M, 877M)."""
    with torch.device("meta"):
        model = SiglipTwoTower(SiglipConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.5)
