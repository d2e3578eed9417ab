"""Packed W8A8 (int8-dyn + prepack): vlmkit's int8 kernel and oneDNN's prepacked int8 linear each
give always-dynamic W8A8's bits."""

import pytest
import torch
from torch import nn

import vlmkit
from vlmkit.generation.prepack import prepack_decoder
from vlmkit.generation.quant import load_quantized, quantize_model, save_quantized
from vlmkit.generation.quantize_dynamic import (DynamicInt8Embedding, DynamicInt8Linear, always_dynamic,
                                                dynamic_int8_matmul)
from vlmkit.generation import quantize_packed
from vlmkit.generation.quantize_packed import (PACKED_INT8, PackedInt8Embedding, PackedInt8Linear, pack_int8,
                                               packed_int8_available)
from vlmkit.kernels import AMX_MIN_OUT, AMX_MIN_ROWS, AMX_MIN_WEIGHT, amx_available, load_int8_kernels

needs_onednn = pytest.mark.skipif(not packed_int8_available(torch.device("cpu")), reason="no oneDNN int8 linear")


@pytest.fixture(params=["kernel", "onednn"])
def backend(request, monkeypatch):
    """Which matmul the packed layers get: vlmkit's kernel (where it builds) or oneDNN's layout."""
    if request.param == "kernel" and not load_int8_kernels():
        pytest.skip("vlmkit's int8 kernel does not build or run here")
    if request.param == "onednn":
        monkeypatch.setattr(quantize_packed, "load_int8_kernels", lambda: False)
    return request.param


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(256, 2048, True), (300, 96, True), (17, 33, False)])
def test_packed_linear_equals_always_dynamic_w8a8(dtype, shape, backend):
    """Every row count, one row (the uint8 path) and prefill-sized ones included."""
    n, k, bias = shape
    torch.manual_seed(0)
    plain = DynamicInt8Linear(nn.Linear(k, n, bias=bias).to(dtype))
    packed = pack_int8(plain)
    assert isinstance(packed, PackedInt8Linear)
    assert type(packed.int8).__name__ == ("_KernelInt8" if backend == "kernel" else "_PackedInt8")
    for m in (1, 2, 8, 16, 17, 64, 300):
        x = torch.randn(1 if m == 1 else 3, m, k).to(dtype)
        want = dynamic_int8_matmul(x, plain.weight_int8, plain.weight_scale, (1, None))
        want = want if plain.bias is None else want + plain.bias.to(want.dtype)
        assert torch.equal(packed(x), want), m


def test_kernel_rows_pick_vnni_or_amx(monkeypatch):
    """On a large weight, decode rows from AMX_MIN_ROWS go to the AMX kernel where it runs (it
    streams the weight faster there), fewer (and a small weight's) to the VNNI one, more than 16 to AMX or _int_mm;
    each gives always-dynamic W8A8's bits."""
    if not load_int8_kernels():
        pytest.skip("vlmkit's int8 kernel does not build or run here")
    calls = []
    for name in ("int8_linear_small", "int8_linear_amx"):
        real = getattr(quantize_packed, name)
        monkeypatch.setattr(quantize_packed, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    torch.manual_seed(0)
    plain = DynamicInt8Linear(nn.Linear(AMX_MIN_WEIGHT // AMX_MIN_OUT, AMX_MIN_OUT, bias=False))
    packed = pack_int8(plain)
    for m in (1, AMX_MIN_ROWS - 1, AMX_MIN_ROWS, 8, 16, 17):
        calls.clear()
        x = torch.randn(m, plain.in_features)
        assert torch.equal(packed(x), dynamic_int8_matmul(x, plain.weight_int8, plain.weight_scale, (1, None))), m
        amx = amx_available() and (m >= AMX_MIN_ROWS)
        small = not amx and m <= 16
        assert calls == (["int8_linear_amx"] if amx else ["int8_linear_small"] if small else []), m
    calls.clear()
    pack_int8(DynamicInt8Linear(nn.Linear(2048, 256, bias=False)))(torch.randn(8, 2048))  # a small weight
    assert calls == ["int8_linear_small"]


@needs_onednn
def test_packed_state_dict_is_the_plain_one(backend):
    torch.manual_seed(0)
    plain = DynamicInt8Linear(nn.Linear(64, 40).bfloat16())
    packed, want = pack_int8(plain).state_dict(), plain.state_dict()
    assert list(packed) == ["weight_int8", "weight_scale", "bias"] and set(packed) == set(want)
    assert all(torch.equal(packed[k], want[k]) for k in want)


@needs_onednn
def test_packed_embedding_head_and_lookup(backend):
    torch.manual_seed(0)
    plain = DynamicInt8Embedding(nn.Embedding(500, 64).bfloat16())
    packed = pack_int8(plain)
    assert isinstance(packed, PackedInt8Embedding)
    ids = torch.tensor([[0, 7, 499]])
    assert torch.equal(packed(ids), plain(ids))
    h = torch.randn(2, 5, 64).bfloat16()
    assert torch.equal(packed.linear(h), dynamic_int8_matmul(h, plain.weight_int8, plain.weight_scale, (1, None)))
    if backend == "kernel":  # one table for the lookup and the head: no second copy
        assert packed.int8.q.data_ptr() == packed.weight_int8.data_ptr()


def test_pack_int8_leaves_other_modules():
    assert pack_int8(nn.Linear(4, 4)) is None and nn.Linear not in PACKED_INT8


@needs_onednn
def test_packed_bundled_model_equals_always_dynamic_and_saves(tmp_path, backend):
    """The bundled model quantised int8-dyn and packed decodes exactly as the unpacked one with
    W8A8 at every row count, and saves to the files of the unpacked one."""
    from PIL import Image

    from vlmkit.generation import SamplingConfig

    plain = vlmkit.load(None, dtype="bfloat16", quantize="int8-dyn")
    packed = vlmkit.load(None, dtype="bfloat16", quantize="int8-dyn", prepack=True)
    decoder_linears = [m for m in packed.model.modules() if isinstance(m, PackedInt8Linear)]
    assert decoder_linears and any(isinstance(m, PackedInt8Embedding) for m in packed.model.modules())
    always_dynamic(plain.model)
    images = [[Image.new("RGB", (32, 32), c)] for c in ("red", "blue")]
    batch = plain.processor(["caption en", "answer en what color?"], images, padding_side="left")
    want = plain.run(batch, SamplingConfig(max_new_tokens=5), output_logits=True)
    got = packed.run(batch, SamplingConfig(max_new_tokens=5), output_logits=True)
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids and torch.equal(g.logits, w.logits)
    save_quantized(packed.model, tmp_path / "a")
    save_quantized(plain.model, tmp_path / "b")
    a, b = load_quantized(tmp_path / "a").state_dict(), load_quantized(tmp_path / "b").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@needs_onednn
def test_prepack_report_counts_int8_layers():
    pipe = vlmkit.load(None, dtype="float32", quantize="int8-dyn")
    report = prepack_decoder(pipe.model)
    packed = sum(isinstance(m, (PackedInt8Linear, PackedInt8Embedding)) for m in pipe.model.modules())
    assert report["packed"] == packed > 0 and report["plain"] == 0
    left = [m for m in pipe.model.modules() if type(m) is DynamicInt8Linear]  # the vision tower's
    assert report["packed"] + len(left) == sum(1 for _ in quantize_model(vlmkit.load(None, dtype="float32").model,
                                                                         "int8-dyn").modules()
                                               if type(_) in (DynamicInt8Linear, DynamicInt8Embedding))
