"""Vision parts against transformers (tiny random configs, fp32, CPU): the CLIP ViT as switches
of the SigLIP tower, LLaVA feature selection, and the connectors (LLaVA MLP, Idefics3 pixel
shuffle + linear, InternVL pixel shuffle + LayerNorm + MLP, DeepSeek-VL's MLP and hybrid
aligner), each with the reference's weights."""

import pytest
import torch
import transformers as tf
from transformers.models.deepseek_vl.modeling_deepseek_vl import DeepseekVLAligner
from transformers.models.deepseek_vl_hybrid.modeling_deepseek_vl_hybrid import DeepseekVLHybridAligner
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector
from transformers.models.internvl.modeling_internvl import InternVLModel, InternVLMultiModalProjector
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tests.parity import hf_builders as hb
from tests.parity.llava_builders import clip_vision_cfg
from vlmkit.models.clip.config import ClipVisionConfig
from vlmkit.models.parts.connectors import (Connector, ConnectorConfig, HybridConnector, HybridConnectorConfig,
                                            pixel_shuffle)
from vlmkit.models.parts.vision import FeatureSelect, select_image_features
from vlmkit.weights.hf import load_hf, save_hf

ATOL = 0.0  # measured: every comparison here is bit-identical in fp32 (same ops, same order)


def _clip(tmp_path, seed=0):
    hf_model = hb.randomize(tf.CLIPVisionModel(clip_vision_cfg()), seed)
    hf_model.save_pretrained(tmp_path / "hf")
    return hf_model, load_hf(tmp_path / "hf", dtype="float32")


def test_clip_vision_outputs(tmp_path):
    """last_hidden_state, pooler_output and every hidden state equal CLIPVisionModel's."""
    hf_model, ours = _clip(tmp_path)
    assert isinstance(ours.cfg, ClipVisionConfig) and ours.cfg.num_positions == 17
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(pixel_values=x, output_hidden_states=True)
        feats = ours(x)
        states = ours.hidden_states(x, range(4))
    torch.testing.assert_close(feats, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.pool(feats), ref.pooler_output, atol=ATOL, rtol=0)
    assert len(ref.hidden_states) == 4
    for got, want in zip(states, ref.hidden_states):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # CLIP's last_hidden_state is the last block's raw output; only the pooled token is normed.
    assert torch.equal(states[-1], feats)


def test_clip_roundtrip(tmp_path):
    """Ours -> HF -> CLIPVisionModel loads with nothing missing; ours -> HF -> ours is bit-identical."""
    hf_model, ours = _clip(tmp_path)
    save_hf(ours, tmp_path / "ours")
    hf2, info = tf.CLIPVisionModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    for (k, v), (k2, v2) in zip(hf_model.state_dict().items(), hf2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    again = load_hf(tmp_path / "ours", dtype="float32")
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("layer,strategy", [(-2, "default"), (-1, "full"), (0, "default"), ((-3, -1), "default"),
                                            ((1, -2, 3), "full")])
def test_feature_selection(tmp_path, layer, strategy):
    """select_image_features == transformers' LlavaModel.get_image_features before the projector."""
    hf_model, ours = _clip(tmp_path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sel = FeatureSelect(vision_feature_layer=layer, vision_feature_select_strategy=strategy)
    with torch.no_grad():
        states = hf_model(pixel_values=x, output_hidden_states=True).hidden_states
        layers = [layer] if isinstance(layer, int) else list(layer)
        want = torch.cat([states[i][:, 1:] if strategy == "default" else states[i] for i in layers], -1)
        got = select_image_features(ours, x, sel)
    assert got.shape == (2, sel.num_tokens(17), sel.width(32))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_feature_layer_out_of_range(tmp_path):
    _, ours = _clip(tmp_path)
    with pytest.raises(ValueError, match="out of range"):
        ours.hidden_states(torch.zeros(1, 3, 32, 32), [4])


def _copy(ours: torch.nn.Module, ref: torch.nn.Module, names: dict[str, str]) -> None:
    """Load the reference module's weights into ours by an explicit (ours <- ref) name map."""
    src = ref.state_dict()
    ours.load_state_dict({o: src[r] for o, r in names.items()}, strict=True)


def _llava_cfg(act="gelu", bias=True, layer=-2):
    return tf.LlavaConfig(vision_config=clip_vision_cfg().to_dict(), text_config=hb.gemma_cfg(1).to_dict(),
                          projector_hidden_act=act, multimodal_projector_bias=bias, vision_feature_layer=layer)


@pytest.mark.parametrize("act,bias,layer", [("gelu", True, -2), ("gelu", False, -2), ("quick_gelu", True, [-2, -1])])
def test_llava_projector(act, bias, layer):
    ref = hb.randomize(LlavaMultiModalProjector(_llava_cfg(act, bias, layer)))
    k = 1 if isinstance(layer, int) else len(layer)
    ours = Connector(ConnectorConfig(hidden_act=act, bias=bias), 32 * k, 48)
    _copy(ours, ref, {n: n for n in ref.state_dict()})
    x = torch.randn(3, 16, 32 * k)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=0)


def test_pixel_shuffle_matches_idefics3_and_internvl():
    """One space-to-depth for both families: Idefics3's (on a sequence) and InternVL's (on a
    grid, scale 0.5) give the same tensor, and ours equals both, exactly (pure data movement)."""
    x = torch.randn(2, 64, 5)
    ide = Idefics3Connector.pixel_shuffle(None, x, scale_factor=2)
    grid = x.reshape(2, 8, 8, 5)
    intern = InternVLModel.pixel_shuffle(None, grid, scale_factor=0.5).reshape(2, -1, 20)
    ours = pixel_shuffle(x, 2)
    assert torch.equal(ours, ide) and torch.equal(ours, intern)
    # Token (0, 1) holds patches (0,2), (0,3), (1,2), (1,3) in that channel order.
    assert torch.equal(ours[:, 1].reshape(2, 4, 5), x[:, [2, 3, 10, 11]])
    with pytest.raises(ValueError, match="square grid"):
        pixel_shuffle(torch.zeros(1, 30, 4), 2)


def test_idefics3_connector():
    cfg = tf.Idefics3Config(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4),
                            text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                             num_attention_heads=4, vocab_size=100), scale_factor=2)
    ref = hb.randomize(Idefics3Connector(cfg))
    ours = Connector(ConnectorConfig(pixel_shuffle=2, num_layers=1, bias=False), 32, 48)
    _copy(ours, ref, {"linear_1.weight": "modality_projection.proj.weight"})
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    assert got.shape == (2, 16, 48)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_internvl_projector():
    cfg = tf.InternVLConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4),
                            text_config=dict(model_type="qwen2", hidden_size=48, intermediate_size=96,
                                             num_hidden_layers=1, num_attention_heads=4, vocab_size=100),
                            downsample_ratio=0.5)
    ref = hb.randomize(InternVLMultiModalProjector(cfg))
    ours = Connector(ConnectorConfig(pixel_shuffle=2, norm=True, hidden_act=cfg.projector_hidden_act), 32, 48)
    _copy(ours, ref, {n: n for n in ref.state_dict()})
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        got = ours(x)
        grid = InternVLModel.pixel_shuffle(None, x.reshape(2, 8, 8, 32), scale_factor=0.5)
        want = ref(grid.reshape(2, -1, 128))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_deepseek_vl_aligner():
    cfg = tf.DeepseekVLConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=4),
                              text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                               num_attention_heads=4, vocab_size=100))
    ref = hb.randomize(DeepseekVLAligner(cfg))
    ours = Connector(ConnectorConfig(), 32, 48)
    _copy(ours, ref, {f"linear_{i}.{p}": f"linear{i}.{p}" for i in (1, 2) for p in ("weight", "bias")})
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=0)


def test_deepseek_vl_hybrid_aligner():
    cfg = tf.DeepseekVLHybridConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
        high_res_vision_config=dict(output_channels=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2),
        text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=100))
    ref = hb.randomize(DeepseekVLHybridAligner(cfg))
    ours = HybridConnector(HybridConnectorConfig(), 32, 32, 48)
    _copy(ours, ref, {n: n for n in ref.state_dict()})
    low, high = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    with torch.no_grad():
        got, want = ours(low, high), ref(low, high)
    assert got.shape == (2, 16, 48)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_clip_presets():
    """Presets with the published shapes; only the CLIP switches differ from a SigLIP tower."""
    big = ClipVisionConfig.from_preset("clip-vit-large-patch14-336")
    assert (big.hidden_size, big.num_layers, big.num_heads, big.num_positions) == (1024, 24, 16, 577)
    assert ClipVisionConfig.from_preset("clip-vit-large-patch14").num_positions == 257
    assert (big.class_token, big.pre_norm, big.patch_bias, big.hidden_act, big.post_norm) == (
        True, True, False, "quick_gelu", "pooled")
    with pytest.raises(ValueError, match="class_token"):
        ClipVisionConfig.from_preset("debug", class_token=False)


def test_siglip_hidden_states(tmp_path):
    """The SigLIP tower's hidden states (feature selection reads them) equal SiglipVisionModel's;
    only `forward` applies the post-LayerNorm there."""
    hf_model = hb.randomize(tf.SiglipVisionModel(hb.siglip_vision_cfg(use_head=False)))
    hf_model.save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="float32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf_model(pixel_values=x, output_hidden_states=True)
        states = ours.hidden_states(x, range(3))
        torch.testing.assert_close(ours(x), ref.last_hidden_state, atol=ATOL, rtol=0)
    for got, want in zip(states, ref.hidden_states, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
