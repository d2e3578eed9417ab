"""Int4 group-wise weight-only quantisation: error bounds, kernel vs dequantised weight, logits of
tiny random decoders for every scheme, the families' decoders, and compiled = eager tokens."""

import pytest
import torch
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.generation.compile import compile_decode
from vlmkit.generation.quant import QuantScheme, quantize_model
from vlmkit.generation.quantize import Int8Embedding, Int8Linear, quantize_int8
from vlmkit.generation.quantize_dynamic import quantize_int8_dynamic
from vlmkit.generation.quantize_int4 import (
    Int4Embedding,
    Int4Linear,
    dequantize_int4,
    pack_nibbles,
    quantize_int4,
    quantize_int4_groups,
    unpack_nibbles,
)
from vlmkit.models.common.decoder import Decoder
from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.registry import get_family

# Stated tolerances, max |logit error| / max |float logit| on the tiny random decoders below (fp32):
# int8 per channel rounds each weight by <= 1/254 of its row's max; int4 by <= 1/30 of its group's
# range, so its bound is ~8x looser; int8-dyn also rounds each activation row by <= 1/254 of its max.
# Measured: int8 ~0.5 %, int8-dyn ~1 %, int4 2-6 % (larger groups: larger error).
LOGIT_TOL = {"int8": 0.03, "int8-dyn": 0.04, "int4-g32": 0.12, "int4-g64": 0.12, "int4-g128": 0.15}
SCHEMES = list(LOGIT_TOL)


def _sz(scales, zeros):
    return torch.stack([scales, zeros], -1).transpose(0, 1)  # [in/g, out, 2]


def test_group_codes_and_error_bound():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 128, generator=g) * torch.linspace(0.01, 3, 40)[:, None]
    codes, scales, zeros = quantize_int4_groups(w, 32)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scales.shape == (40, 4)
    w_hat = dequantize_int4(codes, _sz(scales, zeros), torch.float32)
    step = scales.repeat_interleave(32, dim=1)  # [40, 128], each entry's group step
    assert bool(((w_hat - w).abs() <= step / 2 + 1e-6).all())  # half a step of its own group
    assert int(codes.view(40, 4, 32).amax(-1).min()) == 15 and int(codes.view(40, 4, 32).amin(-1).max()) == 0


def test_nibbles_round_trip():
    codes = torch.randint(0, 16, (7, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    packed = pack_nibbles(codes)
    assert packed.shape == (7, 32) and torch.equal(unpack_nibbles(packed), codes)


def test_group_size_checked():
    with pytest.raises(ConfigError, match="group size"):
        quantize_int4_groups(torch.randn(4, 48), 32)
    with pytest.raises(ConfigError, match="one of"):
        quantize_int4(nn.Linear(64, 64), group_size=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 40])
def test_int4_linear_equals_its_dequantised_weight(dtype, rows):
    """The fused kernel (any M, an output count that is not a multiple of 16: padded) equals
    x @ W_hat.T with the weight the module holds."""
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(128, 50)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(50, 128, generator=g))
    q = Int4Linear.from_linear(lin.to(dtype), 64)
    x = torch.randn(rows, 128, generator=g).to(dtype)
    with torch.no_grad():
        w_hat = dequantize_int4(unpack_nibbles(q.weight_int4), q.scales_and_zeros, torch.float32)
        expected = x.float() @ w_hat.T + lin.bias.float()
        out = q(x)
    assert out.shape == (rows, 50) and out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.02
    torch.testing.assert_close(out.float(), expected, atol=tol * float(expected.abs().max()), rtol=0)


def test_int4_embedding_rows_and_head():
    emb = nn.Embedding(37, 64)
    q = Int4Embedding.from_embedding(emb, 32)
    table = dequantize_int4(unpack_nibbles(q.weight_int4), q.scales_and_zeros, torch.float32)  # [37, 64]
    ids = torch.tensor([[0, 5, 36], [2, 2, 1]])
    torch.testing.assert_close(q(ids), table[ids])
    h = torch.randn(2, 3, 64)
    torch.testing.assert_close(q.linear(h), h @ table.T, atol=1e-4, rtol=1e-4)


def _decoder(tie: bool, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=500, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=32, tie_embeddings=tie)
    return Decoder(cfg).eval()


def _logits(lm: Decoder, ids: torch.Tensor) -> torch.Tensor:
    B, T = ids.shape
    pos = torch.arange(T).expand(B, T)
    valid, prefix = torch.ones(B, T, dtype=torch.bool), torch.zeros(B, T, dtype=torch.bool)
    with torch.no_grad():
        return lm.logits(lm(lm.embed(ids), pos, valid, prefix)).float()


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantised_decoder_logits_within_tolerance(scheme, tie):
    lm = _decoder(tie)
    ids = torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(3))
    ref = _logits(lm, ids)
    s = QuantScheme.parse(scheme)
    if s.bits == 4:
        quantize_int4(lm, s.group_size, skip=())
    else:
        (quantize_int8_dynamic if s.dynamic else quantize_int8)(lm, skip=())
    out = _logits(lm, ids)
    rel = float((out - ref).abs().max() / ref.abs().max())
    print(f"{scheme} tied={tie}: max |err| / max |ref| = {rel:.4f}")
    assert 0 < rel < LOGIT_TOL[scheme], rel
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
    if s.bits == 4:  # every projection and the head are int4 (128 and 256 divide by 32..128)
        assert not any(isinstance(m, nn.Linear) for m in lm.modules())
        assert isinstance(lm.embed_tokens if tie else lm.lm_head, Int4Embedding if tie else Int4Linear)


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_quantize_model_takes_the_family_decoder_only(family):
    spec = get_family(family)
    torch.manual_seed(0)
    model = spec.model_class(spec.preset("debug")).eval()
    quantize_model(model, "int4-g32")
    lm = spec.generation.decoder(model)
    assert any(isinstance(m, Int4Linear) for m in lm.modules())
    outside = [n for n, m in model.named_modules() if isinstance(m, Int4Linear) and not any(m is x for x in lm.modules())]
    assert outside == [] and model.quantization == QuantScheme(bits=4, group_size=32)
    head = lm.embed_tokens if lm.lm_head is None else lm.lm_head
    assert isinstance(head, Int8Embedding if lm.lm_head is None else Int8Linear)  # the head stays int8
    assert not any(isinstance(m, nn.Linear) for m in lm.modules())  # nothing left in float


def test_scheme_names():
    assert QuantScheme.parse("int4") == QuantScheme(bits=4, group_size=64)
    assert QuantScheme.parse("int4-g128").name == "int4-g128"
    assert QuantScheme.parse("int4", group_size=32).name == "int4-g32"
    assert QuantScheme.parse("INT8").name == "int8"
    for bad, kw in [("int3", {}), ("int4-g16", {}), ("int8", {"group_size": 32}), ("int4-gx", {})]:
        with pytest.raises(ConfigError):
            QuantScheme.parse(bad, **kw)


class _Tok:
    eos_id = -1

    def decode(self, ids):
        return ""


def _pali_batch(cfg, rows: int):
    g = torch.Generator().manual_seed(1)
    n = cfg.num_image_tokens
    ids = torch.cat([torch.full((rows, n), cfg.image_token_id), torch.randint(3, 500, (rows, 6), generator=g)], 1)
    px = torch.randn(rows, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g).bfloat16()
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px)


@pytest.mark.slow  # inductor compiles the decode step: tens of seconds each
@pytest.mark.parametrize("scheme,rows", [("int8", 8), ("int8-dyn", 1), ("int8-dyn", 8), ("int4-g32", 2), ("int4-g32", 8)])
def test_compiled_quantised_decode_equals_eager(scheme, rows):
    spec = get_family("paligemma")
    torch.manual_seed(0)
    model = spec.model_class(spec.preset("debug")).eval().to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    quantize_model(model, scheme)
    batch, cfg = _pali_batch(model.cfg, rows), SamplingConfig(max_new_tokens=6)
    torch._dynamo.reset()
    eager = [r.token_ids for r in generate(model, _Tok(), batch, cfg)]
    fn = compile_decode()
    compiled = [r.token_ids for r in generate(model, _Tok(), batch, cfg, decode_fn=fn)]
    assert fn.compiled, fn.reason
    assert compiled == eager
