"""Llama / Mistral / Qwen2 through the shared decoder against transformers (tiny random configs, CPU).

Each case is a transformers config; the reference model is randomised (hf_builders.randomize) and
converted with the production table (`vlmkit.models.llama.hf_mapping`), strictly. Inputs are a
left-padded batch of 2 with explicit position ids from the mask (0-based over tokens, as
transformers' `generate` builds them), given to both models; logits are compared at real tokens.
"""

from dataclasses import replace

import pytest
import torch
import transformers as tf
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from tests.parity import hf_builders as hb
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.models.common.rope import RopeScaling, rope_inv_freq
from vlmkit.models.llama import Llama, LlamaConfig, hf_mapping, positions_from_mask
from vlmkit.weights.convert import convert_strict, rename
from vlmkit.weights.hf import load_hf

_TINY = dict(vocab_size=hb.VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
_LLAMA3 = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=64)  # head_dim 12: frequencies in all three bands
_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=256)
CASES = {
    "llama": (tf.LlamaForCausalLM, tf.LlamaConfig, {}),
    "llama-llama3-rope": (tf.LlamaForCausalLM, tf.LlamaConfig,
                          dict(rope_parameters=_LLAMA3, max_position_embeddings=256, tie_word_embeddings=True)),
    "llama-linear-rope": (tf.LlamaForCausalLM, tf.LlamaConfig,
                          dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    # Llama's attention_bias (q, k, v and o) and mlp_bias, off in published checkpoints.
    "llama-biases": (tf.LlamaForCausalLM, tf.LlamaConfig, dict(attention_bias=True, mlp_bias=True)),
    # Window 5 < 16 tokens, head_dim 16 != 48 / 4, one KV head for four query heads.
    "mistral": (tf.MistralForCausalLM, tf.MistralConfig, dict(sliding_window=5, head_dim=16, num_key_value_heads=1)),
    # q/k/v biases; layers 1.. slide (max_window_layers=1), tied head.
    "qwen2-tied-sliding": (tf.Qwen2ForCausalLM, tf.Qwen2Config,
                           dict(use_sliding_window=True, sliding_window=5, max_window_layers=1,
                                tie_word_embeddings=True)),
    "qwen2-untied": (tf.Qwen2ForCausalLM, tf.Qwen2Config, dict(tie_word_embeddings=False)),
    # YaRN as Qwen2.5 long-context configs use it (a ramp over dims 0..3 of 6, attention factor).
    "qwen2-yarn": (tf.Qwen2ForCausalLM, tf.Qwen2Config,
                   dict(rope_parameters=_YARN, max_position_embeddings=1024)),
}


def _reference(name: str, seed: int = 0) -> torch.nn.Module:
    model_cls, config_cls, kw = CASES[name]
    return hb.randomize(model_cls(config_cls(**{**_TINY, **kw})), seed)


def _ours_from_hf(hf: torch.nn.Module) -> Llama:
    """HF state dict -> our names through the family table, strictly (as weights.hf does)."""
    cfg = hf_mapping.config_from_hf(hf.config.to_dict())
    ours = Llama(cfg).eval()
    sd = hf.state_dict()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    drop = [r"^lm_head\.weight$"] if cfg.tie_embeddings else []
    state = convert_strict(sd, sd.__getitem__, shapes, hf_mapping.table(cfg), reverse=True, drop=drop)
    ours.load_state_dict(state, strict=True)
    return ours


def _hf_from_ours(ours: Llama) -> torch.nn.Module:
    """Our state dict -> HF names -> a transformers model built from config_to_hf, strictly."""
    d = hf_mapping.config_to_hf(ours.cfg)
    hf_cfg = tf.AutoConfig.for_model(d.pop("model_type"), **d)
    hf = tf.AutoModelForCausalLM.from_config(hf_cfg).eval()
    state = {rename(k, hf_mapping.table(ours.cfg)): v for k, v in ours.state_dict().items()}
    if ours.cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return hf


def _batch(T: int = 16, pad: int = 4, seed: int = 1):
    """Left-padded ids / mask [2, T] (row 0 has `pad` padding tokens) and positions from the mask."""
    ids = torch.randint(3, hb.VOCAB, (2, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :pad] = 0
    ids[0, :pad] = 0
    return ids, mask, positions_from_mask(mask)


def _our_logits(ours: Llama, ids, mask, pos) -> torch.Tensor:
    valid = mask.bool()
    return ours.logits(ours(ours.embed(ids), pos, valid, torch.zeros_like(valid)))


def _max_diff(a, b, mask) -> float:
    return (a.float() - b.float())[mask.bool()].abs().max().item()


@pytest.mark.parametrize("name", CASES)
def test_logits_left_padded(name):
    hf = _reference(name)
    ours = _ours_from_hf(hf)
    ids, mask, pos = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = _our_logits(ours, ids, mask, pos)
    # Measured max |ours - transformers| over real tokens in fp32 (torch 2.13 CPU): 0.0 in every case.
    assert _max_diff(got, ref, mask) == 0.0


def test_cases_exercise_their_switches():
    """The converted configs really carry the switch each case is named for."""
    c = {name: hf_mapping.config_from_hf(_reference(name).config.to_dict()) for name in CASES}
    assert c["llama-llama3-rope"].rope_scaling.kind == "llama3" and c["llama-llama3-rope"].tie_embeddings
    assert c["llama-linear-rope"].rope_scaling.kind == "linear"
    assert c["llama-biases"].qkv_bias and c["llama-biases"].o_bias and c["llama-biases"].mlp_bias
    assert c["mistral"].layer_types == ("sliding",) * 3 and c["mistral"].head_dim == 16
    assert c["mistral"].num_kv_heads == 1
    assert c["qwen2-tied-sliding"].layer_types == ("full", "sliding", "sliding") and c["qwen2-tied-sliding"].qkv_bias
    assert not c["qwen2-untied"].tie_embeddings and c["qwen2-untied"].layer_types is None
    assert c["qwen2-yarn"].rope_scaling.kind == "yarn" and c["qwen2-yarn"].rope_scaling.cos_sin_scale > 1.0


@pytest.mark.parametrize("name", CASES)
def test_kv_cache_matches_full_forward(name):
    """Prefill + stepwise decode through generation's static cache == one full forward."""
    ours = _ours_from_hf(_reference(name))
    ids, mask, pos = _batch(T=16, pad=4)
    P = 9  # prompt length; the remaining 7 tokens are fed one at a time
    with torch.no_grad():
        full = _our_logits(ours, ids, mask, pos)
        prefix = torch.zeros(2, P, dtype=torch.bool)
        logits, state = prefill(ours, ours.embed(ids[:, :P]), mask[:, :P], prefix, pos[:, :P], max_len=16)
        steps = [logits]
        for t in range(P, 16):
            step_pos, slot = advance(state)
            steps.append(decode_one_token(ours, ids[:, t:t + 1], step_pos, slot, state.key_valid, state.in_prefix))
    cached = torch.stack(steps[:-1], 1)  # [B, 7, V]: logits predicting tokens P..15
    # Measured max difference 3.0e-7 .. 4.2e-7: float32 rounding of the same sums in other matmul shapes.
    torch.testing.assert_close(cached, full[:, P - 1:15], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2-tied-sliding"])
def test_greedy_tokens_match_generate(name):
    """Greedy decoding through prefill/decode equals transformers' generate on a left-padded batch."""
    hf = _reference(name)
    ours = _ours_from_hf(hf)
    ids, mask, pos = _batch(T=8, pad=3)
    new = 8
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                          min_new_tokens=new, pad_token_id=0)[:, ids.shape[1]:]
        logits, state = prefill(ours, ours.embed(ids), mask, torch.zeros_like(mask, dtype=torch.bool), pos, 8 + new)
        tokens = [logits.argmax(-1)]
        for _ in range(new - 1):
            step_pos, slot = advance(state)
            logits = decode_one_token(ours, tokens[-1][:, None], step_pos, slot, state.key_valid, state.in_prefix)
            tokens.append(logits.argmax(-1))
    assert torch.equal(torch.stack(tokens, 1), ref)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_through_hf(name):
    """ours -> HF names -> transformers (strict) gives equal logits; -> ours again is bit-identical."""
    ours = _ours_from_hf(_reference(name, seed=3))
    hf = _hf_from_ours(ours)
    assert type(hf) is CASES[name][0]
    assert hf_mapping.config_from_hf(hf.config.to_dict()) == ours.cfg
    ids, mask, pos = _batch()
    with torch.no_grad():
        assert _max_diff(_our_logits(ours, ids, mask, pos), hf(input_ids=ids, attention_mask=mask,
                                                                position_ids=pos).logits, mask) == 0.0
    back = _ours_from_hf(hf).state_dict()
    assert all(torch.equal(v, back[k]) for k, v in ours.state_dict().items())


def _bf16_pair(name: str, tmp_path, **cfg_overrides):
    """(ours, transformers) in bf16; the reference loaded as users load it, with from_pretrained.

    (`model.to(torch.bfloat16)` would also round transformers' float32 RoPE `inv_freq` buffer
    to bf16, which from_pretrained(dtype=...) does not do.)"""
    hf = _reference(name)
    ours = _ours_from_hf(hf)
    if cfg_overrides:
        state = ours.state_dict()
        ours = Llama(replace(ours.cfg, **cfg_overrides)).eval()
        ours.load_state_dict(state, strict=True)
    hf.save_pretrained(tmp_path)
    return ours.to(torch.bfloat16), tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()


def _bf16_diff(ours, hf, ids=None, mask=None, pos=None) -> float:
    if ids is None:
        ids, mask, pos = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = _our_logits(ours, ids, mask, pos)
    assert got.dtype == ref.dtype == torch.bfloat16
    return _max_diff(got, ref, mask)


@pytest.mark.parametrize("name", CASES)
def test_logits_bf16_bit_identical(name, tmp_path):
    # Measured: 0.0 for every case (the op order is the reference's, including RMSNorm's cast).
    assert _bf16_diff(*_bf16_pair(name, tmp_path)) == 0.0


@pytest.mark.parametrize("version", [1, 2])
def test_gemma_logits_bf16_bit_identical(version, tmp_path):
    """Gemma 1 / 2 on the same decoder, Gemma's switches (norm offset, float32 scale): bit-exact in bf16."""
    cls = tf.GemmaForCausalLM if version == 1 else tf.Gemma2ForCausalLM
    hb.randomize(cls(hb.gemma_cfg(version))).save_pretrained(tmp_path)
    ours = load_hf(tmp_path, dtype="bfloat16")
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    ids, mask, _ = _batch()
    pos = mask.long().cumsum(-1).masked_fill(mask == 0, 1)  # PaliGemma's 1-based convention
    assert _bf16_diff(ours, hf, ids, mask, pos) == 0.0


def test_bf16_needs_llama_norm_order(tmp_path):
    """Gemma's RMSNorm order (scale in float32, then cast) is not bit-exact for Llama in bf16,
    so the bf16 test above can tell the two `norm_scale_in_fp32` settings apart."""
    assert _bf16_diff(*_bf16_pair("llama", tmp_path, norm_scale_in_fp32=True)) > 0.0


def _hf_rope_config(c: LlamaConfig):
    d = hf_mapping.config_to_hf(c)
    return tf.AutoConfig.for_model(d.pop("model_type"), **d)


_YARN_VARIANTS = [
    dict(),
    dict(truncate=False, beta_fast=16.0, beta_slow=2.0),
    dict(mscale=0.707, mscale_all_dim=1.0),
    dict(attention_factor=0.8, factor=8.0),
]


@pytest.mark.parametrize("preset,kw", [("llama-3.2-1b", None), ("debug-llama3", None)]
                         + [("debug", v) for v in _YARN_VARIANTS])
def test_rope_frequencies_and_scale_bit_equal(preset, kw):
    """Our inverse frequencies and cos/sin multiplier == transformers' rope init functions (llama3, yarn)."""
    c = LlamaConfig.from_preset(preset)
    if kw is not None:
        yarn = dict(kind="yarn", factor=4.0, original_max_position_embeddings=128)
        c = replace(c, max_position_embeddings=512, rope_scaling=RopeScaling(**{**yarn, **kw}))
    ref, scale = ROPE_INIT_FUNCTIONS[c.rope_scaling.kind](_hf_rope_config(c))
    assert scale == c.rope_scaling.cos_sin_scale
    assert torch.equal(rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling), ref)


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "mistral-7b-v0.1", "qwen2-0.5b", "debug", "debug-llama3",
                                    "debug-mistral", "debug-qwen2"])
def test_presets_have_transformers_shapes(preset):
    """Each preset, written as a transformers config, builds a model with our keys' shapes (meta device)."""
    c = LlamaConfig.from_preset(preset)
    with torch.device("meta"):
        ours = Llama(c)
        hf = tf.AutoModelForCausalLM.from_config(_hf_rope_config(c))
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    if c.tie_embeddings:
        assert theirs.pop("lm_head.weight") == theirs["model.embed_tokens.weight"]
    mine = {rename(k, hf_mapping.table(c)): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
