"""`rope_type: dynamic` (InternVL3-1B-hf's published config): read, written back, and within
max_position_embeddings the same cos/sin as transformers' dynamic-NTK rotary embedding."""

import pytest
import torch

tf = pytest.importorskip("transformers")

from vlmkit.models.common.rope import rope_cos_sin, rope_inv_freq  # noqa: E402
from vlmkit.models.llama import hf_mapping  # noqa: E402


def _qwen2_config(**rope):
    return dict(model_type="qwen2", vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                rope_theta=1e6, rope_scaling=rope, tie_word_embeddings=True)


def test_dynamic_rope_reads_writes_and_matches_transformers_within_the_context():
    d = _qwen2_config(type="dynamic", factor=2.0)
    cfg = hf_mapping.config_from_hf(d)
    assert cfg.rope_scaling.kind == "dynamic" and cfg.rope_scaling.factor == 2.0
    back = hf_mapping.config_to_hf(cfg)
    assert back["rope_parameters"]["rope_type"] == "dynamic" and hf_mapping.config_from_hf(back) == cfg
    hf_cfg = tf.Qwen2Config(**{k: v for k, v in d.items() if k != "model_type"})
    rotary = tf.models.qwen2.modeling_qwen2.Qwen2RotaryEmbedding(hf_cfg)
    positions = torch.arange(512)[None]  # the whole context: transformers' dynamic base is unchanged
    x = torch.zeros(1, 512, 16)
    want_cos, want_sin = rotary(x, positions)
    cos, sin = rope_cos_sin(positions, rope_inv_freq(16, 1e6, cfg.rope_scaling), torch.float32)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
