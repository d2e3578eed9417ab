"""Compile mode max-autotune on CPU: frozen weights, kept KV caches, same tokens as eager."""

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

from vlmkit.generation import SamplingConfig, generate
from vlmkit.generation.compile import CompiledDecode, compile_decode
from vlmkit.generation.decode import decode_one_token
from vlmkit.generation.quant import quantize_model

from tests.unit.test_compile import Tok, _batch, _model, assert_first_step_close


def _run(model, decode_fn, rows=(5, 9)):
    res = generate(model, Tok(), _batch(model.cfg, rows), SamplingConfig(max_new_tokens=6), decode_fn=decode_fn)
    return [r.token_ids for r in res]


def test_later_generations_decode_into_the_traced_caches():
    """A frozen graph guards on the cache tensors' identity: each new generation's prefilled cache is
    copied into the modules traced first for its shape (same tokens), also when shapes alternate."""
    model = _model()
    seen = []

    def spy(lm, *args):
        seen.append((lm.layers[0].self_attn.cache.k.shape[0], lm.layers[0].self_attn.cache))
        return decode_one_token(lm, *args)

    fn = CompiledDecode(spy, compiled=True, freezing=True)
    rows = [(5, 9), (4, 4, 6), (9, 2), (6, 3, 4)]  # 2 / 3 rows alternating, longest prompt 9 or 6
    eager = [_run(model, None, r) for r in rows]
    assert [_run(model, fn, r) for r in rows] == eager
    by_batch = {}
    for b, cache in seen:
        by_batch.setdefault(b, set()).add(id(cache))
    assert set(by_batch) == {2, 3} and all(len(ids) == 1 for ids in by_batch.values())


@pytest.mark.slow  # inductor autotunes every matmul shape: ~1 min on 2 shared cores
@pytest.mark.parametrize("scheme", ["int8", "int4-g32"])
def test_max_autotune_decode_equals_eager_and_traces_once(scheme):
    """fp32 quantised model: frozen weights (the precondition for inductor's GEMM templates), the
    same tokens as eager over two generations, and one graph for both (the caches are kept)."""
    model = quantize_model(_model(), scheme)
    eager = _run(model, None)
    torch._dynamo.reset()
    counters.clear()
    fn = compile_decode("max-autotune")
    tokens, code = run_and_get_code(lambda: _run(model, fn))
    assert fn.compiled and fn.freezing, fn.reason
    assert tokens == eager and _run(model, fn) == eager
    assert counters["stats"]["unique_graphs"] == 1
    assert any("_frozen_param" in c for c in code)


@pytest.mark.slow  # as above
def test_max_autotune_int4_bf16_logits_match_eager():
    """bf16: the int4 AMX template and aten's int4pack kernel round differently (measured max |diff|
    <= 0.6% of max |y| per matmul), so a decode step agrees to the tolerance of the int8 bf16 test."""
    assert_first_step_close(quantize_model(_model().to(torch.bfloat16), "int4-g32"), compile_decode("max-autotune"))


def test_compile_option_names_the_mode():
    from vlmkit.errors import ConfigError
    from vlmkit.generation.compile import decode_fn_for

    assert decode_fn_for(False) is None
    assert not decode_fn_for(True).freezing
    assert decode_fn_for("max-autotune").freezing == decode_fn_for("max-autotune").compiled  # off where it fell back
    with pytest.raises(ConfigError, match="mode"):
        decode_fn_for("fastest")


def test_compile_mode_flag_implies_compile():
    import argparse

    from vlmkit.cli_types import add_speed_flags, speed_kwargs

    p = argparse.ArgumentParser()
    add_speed_flags(p)
    assert speed_kwargs(p.parse_args(["--compile-mode", "max-autotune"]))["compile"] == "max-autotune"
    assert speed_kwargs(p.parse_args(["--compile"]))["compile"] is True
    assert speed_kwargs(p.parse_args([]))["compile"] is False


def test_cpu_modes_leave_cuda_graph_trees_alone(monkeypatch):
    """On CPU the compiled step's mode names no CUDA graphs: `torch._dynamo.reset()` (which
    `torch._dynamo.explain` calls) would otherwise reset cudagraph trees while iterating its
    backend registry, which failed a later test with "dictionary changed size during iteration"."""
    import torch._inductor.cudagraph_trees as trees

    def refuse():
        raise AssertionError("a CPU decode step asked for a CUDA graph reset")

    monkeypatch.setattr(trees, "reset_cudagraph_trees", refuse)
    torch._dynamo.reset()
    fns = [compile_decode(mode, device="cpu") for mode in ("max-autotune", "reduce-overhead")]
    torch._dynamo.reset()  # resets every backend made since the last reset
    assert all(fn.compiled == fns[0].compiled for fn in fns)


@pytest.mark.slow  # as above
def test_max_autotune_over_packed_int8_dyn_equals_eager():
    """Packed W8A8 layers compile only with frozen weights (inductor's lowering of
    `onednn.qlinear_pointwise` wants the packed weight as a graph constant): fp32, same tokens as
    eager over two generations."""
    from vlmkit.generation.prepack import prepack_decoder
    from vlmkit.generation.quantize_packed import PackedInt8Linear, packed_int8_available

    if not packed_int8_available(torch.device("cpu")):
        pytest.skip("no oneDNN int8 linear here")
    model = quantize_model(_model(), "int8-dyn")
    assert prepack_decoder(model)["packed"] > 0 and any(isinstance(m, PackedInt8Linear) for m in model.modules())
    eager = _run(model, None)
    torch._dynamo.reset()
    fn = compile_decode("max-autotune")
    assert _run(model, fn) == eager and _run(model, fn) == eager
    assert fn.compiled and fn.freezing, fn.reason


@pytest.mark.slow  # as above
def test_max_autotune_over_packed_bf16_is_close_to_eager():
    from vlmkit.generation.prepack import prepack_available, prepack_decoder

    if not prepack_available(torch.bfloat16, torch.device("cpu")):
        pytest.skip("no oneDNN bf16 here")
    model = _model().to(torch.bfloat16)
    prepack_decoder(model)
    assert_first_step_close(model, compile_decode("max-autotune"))
