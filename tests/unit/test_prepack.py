"""prepack_decoder: blocked-layout bf16 projections give the plain model's logits bit for bit."""

from dataclasses import replace

import pytest
import torch

from vlmkit.generation import SamplingConfig, generate
from vlmkit.generation.prepack import PackedLinear, prepack_available, prepack_decoder
from vlmkit.models.qwen2_vl import config as qcfg
from vlmkit.models.qwen2_vl.model import Qwen2VL

needs_onednn_bf16 = pytest.mark.skipif(not prepack_available(torch.bfloat16, torch.device("cpu")),
                                       reason="no oneDNN bf16 on this CPU")


class IdTokenizer:
    eos_id = -1  # never sampled: every row runs to max_new_tokens

    def decode(self, ids):
        return ""


def _model(width: int, dtype: torch.dtype) -> Qwen2VL:
    cfg = qcfg.from_preset("debug")
    if width != cfg.text.hidden_size:  # a wider decoder: oneDNN blocks K and N as at real shapes
        text = replace(cfg.text, hidden_size=width, intermediate_size=3 * width + 64, num_heads=width // 16,
                       num_kv_heads=4)
        cfg = replace(cfg, text=text, vision=replace(cfg.vision, hidden_size=width))
    torch.manual_seed(0)
    model = Qwen2VL(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.1)
    return model.to(dtype)


def _text_batch() -> dict:
    """Two left-padded text-only prompts (the decoder is all that prepack changes)."""
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0
    return dict(input_ids=ids, attention_mask=mask)


def _generate(model, batch):
    out = generate(model, IdTokenizer(), batch, SamplingConfig(max_new_tokens=6), output_logits=True)
    return [r.token_ids for r in out], torch.stack([r.logits for r in out])


@needs_onednn_bf16
@pytest.mark.parametrize("width", [64, 512])
def test_packed_decoder_gives_identical_logits(width):
    model, batch = _model(width, torch.bfloat16), _text_batch()
    tokens, logits = _generate(model, batch)
    report = prepack_decoder(model)
    packed = [m for m in model.language_model.modules() if isinstance(m, PackedLinear)]
    assert report["packed"] == len(packed) > 0
    assert report["packed"] + report["plain"] == 7 * model.cfg.text.num_layers  # q k v o gate up down
    assert not any(isinstance(m, PackedLinear) for m in model.visual.modules())  # the decoder only
    got_tokens, got_logits = _generate(model, batch)
    assert got_tokens == tokens
    assert torch.equal(got_logits, logits)


def test_float32_and_unsupported_stay_plain():
    model = _model(64, torch.float32)
    report = prepack_decoder(model)
    assert report["packed"] == 0 and report["plain"] == 7 * model.cfg.text.num_layers
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
