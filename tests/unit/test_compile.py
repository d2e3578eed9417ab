"""Compiled decode: no graph breaks, same tokens as eager, and a logged eager fallback."""

import logging

import pytest
import torch

from vlmkit.errors import ConfigError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.generation import compile as vcompile
from vlmkit.generation.compile import CompiledDecode, compile_decode
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.generation.quantize import quantize_int8
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.models.paligemma.model import positions_from_mask


class Tok:
    eos_id = -1  # never produced: every run yields exactly max_new_tokens

    def decode(self, ids):
        return " ".join(map(str, ids))


def _model(preset="debug"):
    torch.manual_seed(0)
    m = PaliGemma(PaliGemmaConfig.from_preset(preset)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _batch(cfg, lens=(5, 9)):
    """Two left-padded rows of different prompt lengths, so padding masks are exercised."""
    g = torch.Generator().manual_seed(1)
    n, T = cfg.num_image_tokens, cfg.num_image_tokens + max(lens)
    ids, mask = torch.zeros(len(lens), T, dtype=torch.long), torch.zeros(len(lens), T, dtype=torch.long)
    for i, k in enumerate(lens):
        row = torch.cat([torch.full((n,), cfg.image_token_id), torch.randint(3, 500, (k,), generator=g)])
        ids[i, T - len(row):], mask[i, T - len(row):] = row, 1
    px = torch.randn(len(lens), 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), pixel_values=px)


def _decode_args(model, batch):
    """Arguments of the first decode step after a real prefill (cache left set up)."""
    lm = model.language_model
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embeds = model.embed_inputs(ids, model.encode_images(batch["pixel_values"]))
    logits, state = prefill(lm, embeds, mask, mask.bool(), positions_from_mask(mask), ids.shape[1] + 4)
    pos, slot = advance(state)
    return lm, logits.argmax(-1)[:, None], pos, slot, state.key_valid, state.in_prefix


@pytest.mark.parametrize("preset", ["debug", "debug-pg2"])
def test_decode_step_has_no_graph_breaks(preset):
    model = _model(preset)
    with torch.inference_mode():
        args = _decode_args(model, _batch(model.cfg))
        explanation = torch._dynamo.explain(decode_one_token)(*args)
    model.language_model.clear_caches()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_quantised_decode_step_has_no_graph_breaks():
    model = quantize_int8(_model())
    with torch.inference_mode():
        args = _decode_args(model, _batch(model.cfg))
        explanation = torch._dynamo.explain(decode_one_token)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def _tokens(model, decode_fn):
    torch._dynamo.reset()
    res = generate(model, Tok(), _batch(model.cfg), SamplingConfig(max_new_tokens=8), decode_fn=decode_fn)
    return [r.token_ids for r in res]


@pytest.mark.parametrize("preset", ["debug", "debug-pg2"])
def test_traced_decode_equals_eager_token_for_token(preset):
    """Dynamo tracing with fullgraph (aot_eager: no code generation, seconds)."""
    model = _model(preset)
    fn = compile_decode(backend="aot_eager")
    assert _tokens(model, fn) == _tokens(model, None)
    assert fn.compiled, fn.reason  # it did not silently fall back


@pytest.mark.slow  # inductor compiles C++ kernels: ~30 s on 2 shared CPU cores
def test_inductor_decode_equals_eager_token_for_token():
    model = _model()
    fn = compile_decode()
    assert _tokens(model, fn) == _tokens(model, None)
    assert fn.compiled, fn.reason


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="mode"):
        compile_decode(mode="fastest")


def test_no_compiler_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(vcompile.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level(logging.WARNING, logger="vlmkit.generation.compile"):
        fn = compile_decode()
    assert not fn.compiled and "C++ compiler" in fn.reason
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    model = _model()
    assert _tokens(model, fn) == _tokens(model, None)


def test_compile_failure_on_first_call_falls_back(caplog):
    def broken(*args):
        raise torch._inductor.exc.InductorError(RuntimeError("cannot build kernel\nlong traceback"), None)

    fn = CompiledDecode(broken, compiled=True)
    model = _model()
    with caplog.at_level(logging.WARNING, logger="vlmkit.generation.compile"):
        tokens = _tokens(model, fn)
    assert tokens == _tokens(model, None)
    assert not fn.compiled and "cannot build kernel" in fn.reason and "traceback" not in fn.reason
    assert len(caplog.records) == 1


def test_real_errors_are_not_swallowed(caplog):
    def wrong_shapes(*args):
        raise IndexError("index 9 is out of bounds for dimension 2 with size 8")

    fn = CompiledDecode(wrong_shapes, compiled=True)
    with pytest.raises(IndexError, match="out of bounds"):
        fn(None, None, None, None, None, None)
    assert fn.compiled and not caplog.records


def assert_first_step_close(model, fn):
    """The first decode step of `fn` against eager `decode_one_token` in bf16: kernels sum in
    different orders, so logits agree to bf16 precision, not bitwise (and long greedy runs may pick
    a different token at a near tie)."""
    torch._dynamo.reset()
    with torch.inference_mode():
        args = _decode_args(model, _batch(model.cfg))
        compiled = fn(*args).float()
        eager = decode_one_token(*args).float()
    assert fn.compiled, fn.reason
    torch.testing.assert_close(compiled, eager, atol=0.02 * float(eager.abs().max()), rtol=0)


@pytest.mark.slow  # inductor compile, ~30 s
def test_inductor_compiles_int8_bf16_decode_without_fallback():
    """The fused int8 kernel is lowered by inductor (it was not when scales were cast in-graph)."""
    assert_first_step_close(quantize_int8(_model().to(torch.bfloat16)), compile_decode())
