"""Int8 weights with dynamic int8 activations ("int8-dyn"): the integer GEMM's exactness, rows
independent of the batch, the prefill fallback, and a decoder's batched logits row by row."""

import pytest
import torch
from torch import nn

from vlmkit.generation.quant import QuantScheme, quantize_model
from vlmkit.generation.quantize import int8_matmul, quantize_per_channel
from vlmkit.generation.quantize_dynamic import (
    DYNAMIC_MAX_ROWS,
    DynamicInt8Embedding,
    DynamicInt8Linear,
    always_dynamic,
    dynamic_int8_matmul,
    quantize_rows,
)

EVERY = (1, None)  # W8A8 at every row count
from vlmkit.models.registry import get_family


def _weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


def test_rows_quantised_to_half_a_step():
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(1)) * torch.tensor([1e-3, 1, 10, 100, 0])[:, None]
    a, sx = quantize_rows(x)
    assert a.dtype == torch.int8 and sx.shape == (5, 1) and a.abs().max() <= 127
    step = x.abs().amax(1, keepdim=True) / 127
    assert ((a.float() * sx - x).abs() <= step / 2 + 1e-6 * step).all()
    assert (a[4] == 0).all()  # an all-zero row stays zero (no division by zero)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_integer_gemm_is_exact_and_close_to_float(dtype):
    w = _weight(200, 160)
    q, s = quantize_per_channel(w)
    x = torch.randn(3, 4, 160, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = dynamic_int8_matmul(x, q, s.to(dtype))
    assert y.shape == (3, 4, 200) and y.dtype == dtype
    a, sx = quantize_rows(x.reshape(12, 160))
    acc = (a.double() @ q.double().T).float()  # the integer sum, exact in float64 (and in float32: < 2**24)
    assert torch.equal(y.reshape(12, 200), (acc * sx * s.to(dtype).float()).to(dtype))
    ref = x.float() @ w.T
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < 0.03


def test_rows_do_not_depend_on_the_batch():
    q, s = quantize_per_channel(_weight(300, 128))
    x = torch.randn(8, 128, generator=torch.Generator().manual_seed(3)).bfloat16()
    x[5] *= 50  # an outlier row must not change the others' scales
    batched = dynamic_int8_matmul(x, q, s.bfloat16())
    assert torch.equal(batched, torch.cat([dynamic_int8_matmul(x[i:i + 1], q, s.bfloat16(), EVERY) for i in range(8)]))
    assert torch.equal(batched[:4], dynamic_int8_matmul(x[:4], q, s.bfloat16()))


def test_one_row_takes_the_fused_weight_only_kernel_in_bf16_only():
    q, s = quantize_per_channel(_weight(64, 32))
    x = torch.randn(1, 32)
    b = x.bfloat16()
    assert torch.equal(dynamic_int8_matmul(b, q, s.bfloat16()), int8_matmul(b, q, s.bfloat16()))
    assert not torch.equal(dynamic_int8_matmul(b, q, s.bfloat16(), EVERY), int8_matmul(b, q, s.bfloat16()))
    # fp32: int8_matmul would cast the whole weight, so one row runs W8A8 too
    assert torch.equal(dynamic_int8_matmul(x, q, s), dynamic_int8_matmul(x, q, s, EVERY))


def test_prefill_sized_inputs_take_the_weight_only_path():
    q, s = quantize_per_channel(_weight(64, 32))
    x = torch.randn(DYNAMIC_MAX_ROWS + 1, 32).bfloat16()
    assert torch.equal(dynamic_int8_matmul(x, q, s.bfloat16()), int8_matmul(x, q, s.bfloat16()))
    small = x[:DYNAMIC_MAX_ROWS]
    assert not torch.equal(dynamic_int8_matmul(small, q, s.bfloat16()), int8_matmul(small, q, s.bfloat16()))


def test_modules_hold_the_int8_buffers():
    lin, emb = nn.Linear(32, 48), nn.Embedding(50, 32)
    d, e = DynamicInt8Linear(lin), DynamicInt8Embedding(emb)
    assert sorted(d.state_dict()) == ["bias", "weight_int8", "weight_scale"]
    assert sorted(e.state_dict()) == ["weight_int8", "weight_scale"]
    h = torch.randn(2, 3, 32)
    with torch.no_grad():
        pairs = [(d(h), lin(h)), (e.linear(h), h @ emb.weight.T)]
    for out, ref in pairs:
        assert float((out - ref).abs().max() / ref.abs().max()) < 0.03


def test_scheme_name_round_trips():
    s = QuantScheme.parse("int8-dyn")
    assert s == QuantScheme(bits=8, dynamic=True) and QuantScheme.parse(s.name) == s
    assert QuantScheme.parse("int8") != s


@pytest.mark.parametrize("family", ["paligemma", "llava"])
def test_batched_decoder_logits_equal_rows_alone(family):
    """One decode step of 8 sequences vs each sequence alone, row by row: equal bit for bit when
    every call is W8A8 (`always_dynamic`), within the activation rounding as used (a lone row takes
    the weight-only kernel in bf16), and both close to the float model."""
    spec = get_family(family)
    torch.manual_seed(0)
    model = spec.model_class(spec.preset("debug")).eval().to(torch.bfloat16)
    lm = spec.generation.decoder(model)
    ref_lm = spec.generation.decoder(spec.model_class(spec.preset("debug")).eval())
    ref_lm.load_state_dict(lm.state_dict())  # float32 reference
    quantize_model(model, "int8-dyn")
    assert not any(isinstance(m, nn.Linear) for m in lm.modules())
    B, V = 8, lm.cfg.vocab_size
    ids = torch.randint(3, min(V, 500), (B, 1), generator=torch.Generator().manual_seed(4))
    pos, valid = torch.zeros(B, 1, dtype=torch.long), torch.ones(B, 1, dtype=torch.bool)
    prefix = torch.zeros(B, 1, dtype=torch.bool)

    def step(m, r):
        with torch.no_grad():
            return m.logits(m(m.embed(ids[r]), pos[r], valid[r], prefix[r])).float()  # [b, 1, V]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    batched = step(lm, slice(None))
    alone = torch.cat([step(lm, slice(i, i + 1)) for i in range(B)])
    ref = step(ref_lm, slice(None))
    assert not torch.equal(batched, alone) and rel(batched, alone) < 0.05
    assert rel(batched, ref) < 0.05 and rel(alone, ref) < 0.05
    always_dynamic(model)
    assert torch.equal(torch.cat([step(lm, slice(i, i + 1)) for i in range(B)]), batched)
