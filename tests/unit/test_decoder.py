"""The shared decoder's switches, configs and HF config conversion (no reference model needed)."""

import math
from dataclasses import replace

import pytest
import torch

from vlmkit.errors import ConfigError
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.generation.quantize import quantize_int8
from vlmkit.models.common.decoder import Decoder
from vlmkit.models.common.decoder_config import DecoderConfig, sliding_from
from vlmkit.models.common.init import init_weights
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.rope import RopeScaling, rope_inv_freq
from vlmkit.models.gemma import Gemma, GemmaConfig
from vlmkit.models.gemma import hf_mapping as gemma_map
from vlmkit.models.llama import Llama, LlamaConfig, hf_mapping, positions_from_mask
from vlmkit.models.llama.config import PRESETS


def _model(name: str, **overrides) -> Llama:
    return init_weights(Llama(LlamaConfig.from_preset(name, **overrides)), seed=0).eval()


def _logits(model: Decoder, ids: torch.Tensor) -> torch.Tensor:
    B, T = ids.shape
    valid = torch.ones(B, T, dtype=torch.bool)
    pos = torch.arange(T)[None].expand(B, -1)
    with torch.no_grad():
        return model.logits(model(model.embed(ids), pos, valid, torch.zeros_like(valid)))


def test_rmsnorm_orders_agree_in_fp32_and_differ_in_bf16():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g) * 3
    norms = [RMSNorm(64, unit_offset=False, scale_in_fp32=f) for f in (True, False)]
    for n in norms:
        n.weight.data = torch.randn(64, generator=g) if n is norms[0] else norms[0].weight.data.clone()
    assert torch.equal(norms[0](x), norms[1](x))
    xb = x.bfloat16()
    outs = [n.bfloat16()(xb) for n in norms]
    assert all(o.dtype == torch.bfloat16 for o in outs)
    assert not torch.equal(outs[0], outs[1])


def test_rmsnorm_unit_offset_starts_as_identity_scale():
    x = torch.randn(3, 16)
    gemma, llama = RMSNorm(16, unit_offset=True), RMSNorm(16, unit_offset=False)
    torch.testing.assert_close(gemma(x), llama(x), rtol=0, atol=0)  # (1 + 0) == 1


def test_linear_rope_scaling_divides_every_frequency():
    base = rope_inv_freq(16, 10000.0)
    scaled = rope_inv_freq(16, 10000.0, RopeScaling(kind="linear", factor=4.0))
    torch.testing.assert_close(scaled * 4.0, base)


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    s = RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=64)
    base, scaled = rope_inv_freq(16, 10000.0), rope_inv_freq(16, 10000.0, s)
    wavelen = 2 * torch.pi / base
    high, low = wavelen < 64 / 4, wavelen > 64 / 1
    assert high.any() and low.any() and (~high & ~low).any()  # all three bands are exercised
    assert torch.equal(scaled[high], base[high])
    torch.testing.assert_close(scaled[low], base[low] / 8.0)
    mid = ~high & ~low
    assert bool(((scaled[mid] < base[mid]) & (scaled[mid] > base[mid] / 8.0)).all())


def test_yarn_scales_cos_sin_by_its_attention_factor():
    s = RopeScaling(kind="yarn", factor=4.0, original_max_position_embeddings=64)
    assert s.cos_sin_scale == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert replace(s, attention_factor=0.5).cos_sin_scale == 0.5
    assert RopeScaling(kind="linear", factor=4.0).cos_sin_scale == 1.0
    base, scaled = rope_inv_freq(16, 10000.0), rope_inv_freq(16, 10000.0, s)
    assert torch.equal(scaled[0], base[0])  # the fastest dimension is extrapolated (kept)
    torch.testing.assert_close(scaled[-1], base[-1] / 4.0)  # the slowest is interpolated


def test_sliding_window_hides_exactly_the_tokens_outside_it():
    """One all-sliding layer with window W: token 0 reaches position W - 1 but not position W."""
    model = _model("debug-mistral", num_layers=1, layer_types=("sliding",))
    W = model.cfg.sliding_window
    ids = torch.randint(3, 500, (1, W + 4), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 0] = 3 if ids[0, 0] != 3 else 4
    a, b = _logits(model, ids), _logits(model, other)
    assert not torch.equal(a[0, W - 1], b[0, W - 1])
    assert torch.equal(a[0, W:], b[0, W:])


def test_grouped_kv_heads_read_their_group():
    """With K=2 KV heads for H=4 query heads, zeroing KV head 1's value rows changes only the
    outputs of query heads 2 and 3 (head h reads KV head h // 2)."""
    model = _model("debug")
    attn = model.layers[0].self_attn
    hd = model.cfg.head_dim
    x = torch.randn(1, 5, model.cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    cos, sin = torch.ones(1, 5, hd), torch.zeros(1, 5, hd)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    captured = []
    attn.o_proj.register_forward_hook(lambda m, i, o: captured.append(i[0].view(1, 5, 4, hd)))
    with torch.no_grad():
        attn(x, cos, sin, mask, torch.arange(5))
        attn.v_proj.weight[hd:] = 0  # KV head 1
        attn(x, cos, sin, mask, torch.arange(5))
    before, after = captured
    assert torch.equal(before[:, :, :2], after[:, :, :2])
    assert not torch.equal(before[:, :, 2:], after[:, :, 2:])


@pytest.mark.parametrize("name", ["debug", "debug-llama3", "debug-mistral", "debug-qwen2"])
def test_debug_presets_run(name):
    model = _model(name)
    out = _logits(model, torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 12, 512) and torch.isfinite(out).all()
    assert (model.lm_head is None) == model.cfg.tie_embeddings


def test_qwen2_preset_has_qkv_bias_only():
    attn = Llama(LlamaConfig.from_preset("debug-qwen2")).layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
    c = LlamaConfig.from_preset(name)
    assert hf_mapping.config_from_hf(hf_mapping.config_to_hf(c)) == c


def test_gemma_keeps_its_switches_and_type():
    c = GemmaConfig.from_preset("debug")
    assert (c.norm_unit_offset, c.norm_scale_in_fp32, c.embed_scale, c.mlp_activation, c.tie_embeddings) == (
        True, True, True, "gelu_tanh", True)
    g, m = Gemma(c), Llama(LlamaConfig.from_preset("debug"))
    assert isinstance(g, Decoder) and isinstance(m, Decoder) and type(g) is not type(m)
    assert g.norm.unit_offset and not m.norm.unit_offset


def test_positions_from_mask_count_from_zero_over_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("kw,match", [
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(layer_types=("full",)), "layer_types has 1 entries"),
    (dict(layer_types=("sliding", "full")), "sliding_window is not set"),
    (dict(mlp_activation="relu"), "mlp_activation"),
    (dict(head_dim=15), "even"),
])
def test_config_errors(kw, match):
    base = dict(vocab_size=8, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match=match):
        DecoderConfig(**{**base, **kw})


def test_rope_scaling_errors():
    with pytest.raises(ValueError, match="not supported"):
        RopeScaling(kind="longrope", factor=2.0)
    with pytest.raises(ValueError, match="high_freq_factor"):
        RopeScaling(kind="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0)


def test_unknown_preset_lists_choices():
    with pytest.raises(KeyError, match="debug-qwen2"):
        LlamaConfig.from_preset("llama-9000")


@pytest.mark.parametrize("overrides,match", [
    (dict(hf_model_type="mistral", qkv_bias=True), "biases"),
    (dict(layer_types=sliding_from(2, 1), sliding_window=4), "sliding-window layers"),
    (dict(qkv_bias=True), "differ"),
    (dict(norm_unit_offset=True), "Gemma-only"),
    (dict(hf_model_type="qwen2"), "other biases than q/k/v"),
    (dict(hf_model_type="mistral", layer_types=sliding_from(2, 1), sliding_window=4), "some layers only"),
])
def test_config_to_hf_refuses_what_transformers_cannot_express(overrides, match):
    with pytest.raises(ConfigError, match=match):
        hf_mapping.config_to_hf(LlamaConfig.from_preset("debug", **overrides))


_HF = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2)


def test_config_from_hf_reads_the_4x_rope_form_like_the_5x_form():
    old = hf_mapping.config_from_hf(dict(_HF, model_type="llama", rope_theta=5e5,
                                         rope_scaling=dict(type="linear", factor=2.0)))
    new = hf_mapping.config_from_hf(dict(_HF, model_type="llama",
                                         rope_parameters=dict(rope_type="linear", rope_theta=5e5, factor=2.0)))
    assert old == new and old.rope_scaling == RopeScaling(kind="linear", factor=2.0) and old.rope_theta == 5e5


def test_config_from_hf_sliding_window_semantics():
    mistral = dict(_HF, model_type="mistral")
    assert hf_mapping.config_from_hf(mistral).layer_types == ("sliding", "sliding")  # default window 4096
    assert hf_mapping.config_from_hf(dict(mistral, sliding_window=None)).layer_types is None
    qwen = dict(_HF, model_type="qwen2", sliding_window=16, max_window_layers=1)
    assert hf_mapping.config_from_hf(qwen).layer_types is None  # use_sliding_window defaults to False
    on = hf_mapping.config_from_hf(dict(qwen, use_sliding_window=True))
    assert on.layer_types == ("full", "sliding") and on.sliding_window == 16
    assert hf_mapping.config_from_hf(dict(_HF, model_type="llama", head_dim=None)).head_dim == 8


@pytest.mark.parametrize("d,match", [
    (dict(_HF, model_type="llama", rope_parameters=dict(rope_type="longrope", factor=2.0)), "longrope"),
    (dict(_HF, model_type="llama", rope_parameters=dict(rope_type="longrope", factor=2.0)), "longrope"),
    (dict(_HF, model_type="llama", hidden_act="gelu"), "hidden_act"),
    (dict(_HF, model_type="phi3"), "unsupported text model_type"),
])
def test_config_from_hf_errors(d, match):
    with pytest.raises(ValueError, match=match):
        hf_mapping.config_from_hf(d)


def test_gemma_default_config_is_not_a_llama_one():
    """A GemmaConfig built without the new fields keeps Gemma's behaviour (existing callers)."""
    c = GemmaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                    num_kv_heads=1, head_dim=8)
    assert replace(c) == c and c.norm_unit_offset and c.embed_scale and c.mlp_activation == "gelu_tanh"


def test_gemma_config_to_hf_refuses_llama_switches():
    assert gemma_map.config_to_hf(GemmaConfig.from_preset("debug"))["model_type"] == "gemma"
    with pytest.raises(ConfigError, match="Llama-style"):
        gemma_map.config_to_hf(GemmaConfig.from_preset("debug", qkv_bias=True))


def test_untied_head_survives_int8_quantisation():
    """`logits` calls an untied head as a module, so generation's int8 replacement of it works."""
    model = _model("debug")
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    ref = _logits(model, ids)
    quantize_int8(model)
    assert type(model.lm_head).__name__ == "Int8Linear"
    got = _logits(model, ids)
    assert (got - ref).abs().max() <= 0.02 * (ref.max() - ref.min())


@pytest.mark.parametrize("name,overrides", [
    ("debug-llama3", {}), ("debug-mistral", {}), ("debug-qwen2", {}),
    ("debug", dict(rope_scaling=RopeScaling(kind="yarn", factor=4.0, original_max_position_embeddings=64))),
])
def test_decode_step_has_no_graph_breaks(name, overrides):
    """The generation engine's compiled decode step traces the new switches in one graph."""
    model = _model(name, **overrides)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    ids = torch.randint(3, 500, mask.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, state = prefill(model, model.embed(ids), mask, torch.zeros_like(mask, dtype=torch.bool),
                                positions_from_mask(mask), 10)
        pos, slot = advance(state)
        args = (model, logits.argmax(-1)[:, None], pos, slot, state.key_valid, state.in_prefix)
        explanation = torch._dynamo.explain(decode_one_token)(*args)
    model.clear_caches()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
