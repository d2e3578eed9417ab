"""Int8 weight-only quantisation: error bounds, memory, and generation on the debug PaliGemma."""

import pytest
import torch
from torch import nn

from vlmkit.generation import SamplingConfig, generate
from vlmkit.generation.quantize import (
    Int8Embedding,
    Int8Linear,
    int8_matmul,
    quantize_int8,
    quantize_per_channel,
    state_bytes,
)
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig

# Stated tolerance: max |logit error| <= 3 % of the float logits' max |value| (per-channel int8
# rounds each weight by at most half a step, 1/254 of its row's max; errors add up over layers).
LOGIT_TOL = 0.03


def _model(preset: str, seed: int = 0) -> PaliGemma:
    torch.manual_seed(seed)
    m = PaliGemma(PaliGemmaConfig.from_preset(preset)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m


def _inputs(cfg: PaliGemmaConfig, text_len: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n = cfg.num_image_tokens
    ids = torch.cat([torch.full((2, n), cfg.image_token_id), torch.randint(3, 500, (2, text_len), generator=g)], 1)
    px = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    return ids, px


def test_per_channel_round_trip_error_is_half_a_step():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 3, 64)[:, None]
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # per row, not one global step
    assert int(q.abs().amax(1).min()) == 127  # every row uses the full range


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_matches_dequantised_linear(dtype):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 64, generator=g))
        lin.bias.copy_(torch.randn(48, generator=g))
    x = torch.randn(3, 5, 64, generator=g).to(dtype)
    q = Int8Linear(lin)
    deq = (q.weight_int8.float() * q.weight_scale[:, None]).to(dtype)
    with torch.no_grad():
        expected = torch.nn.functional.linear(x.float(), deq.float(), lin.bias.float())
    with torch.no_grad():
        out = q(x)
    assert out.shape == (3, 5, 48) and out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 0.1
    torch.testing.assert_close(out.float(), expected, atol=tol * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("rows", [1, 4, 40])
def test_fused_and_cast_paths_agree(rows):
    """bf16 with <= INT8PACK_MAX_ROWS rows takes the fused CPU kernel, more rows the cast path:
    both equal the float32 product of the dequantised weight to bf16 accuracy."""
    g = torch.Generator().manual_seed(3)
    q, s = quantize_per_channel(torch.randn(32, 64, generator=g))
    x = torch.randn(rows, 64, generator=g)
    expected = x @ (q.float() * s[:, None]).T
    out = int8_matmul(x.bfloat16(), q, s)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 32)
    torch.testing.assert_close(out.float(), expected, atol=0.05 * float(expected.abs().max()), rtol=0)
    torch.testing.assert_close(int8_matmul(x, q, s), expected, atol=1e-4, rtol=1e-5)


def test_weight_only_kernel_serves_bf16_rows_where_amx(monkeypatch):
    """On a CPU with AMX, eager bf16 int8 layers of a large weight go through vlmkit's kernel at
    every row count (int8pack walks the weight per row); the result is within one bf16 step of
    the float32 product. Elsewhere int8pack / the cast as before, to the same bound."""
    from vlmkit.generation import quantize
    from vlmkit.kernels import AMX_MIN_WEIGHT, amx_available, load_int8_kernels

    calls = []
    real = quantize.int8_weight_only
    monkeypatch.setattr(quantize, "int8_weight_only", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    g = torch.Generator().manual_seed(4)
    q, s = quantize_per_channel(torch.randn(2048, AMX_MIN_WEIGHT // 2048, generator=g))
    sb = s.bfloat16()
    for rows in (1, 8, 64):
        x = torch.randn(rows, q.shape[1], generator=g).bfloat16()
        ref = x.double() @ (q.double() * sb.double()[:, None]).T
        out = int8_matmul(x, q, sb)
        assert out.dtype == torch.bfloat16
        assert float((out.double() - ref).abs().max()) <= 2**-8 * float(ref.abs().max()), rows
    assert calls == ([1, 8, 64] if amx_available() and load_int8_kernels() else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blockwise_cast_equals_the_one_shot_cast(monkeypatch, dtype):
    """The cast path casts the weight a block of rows at a time (the last block partial): the
    same product as casting it whole, to the dtype's rounding."""
    from vlmkit.generation import quantize

    g = torch.Generator().manual_seed(5)
    q, s = quantize_per_channel(torch.randn(100, 64, generator=g))
    s = s.to(dtype)
    x = torch.randn(70, 64, generator=g).to(dtype)
    whole = torch.nn.functional.linear(x, q.to(dtype)) * s
    monkeypatch.setattr(quantize, "CAST_BLOCK", 64 * 30)  # 30 rows per block: 30, 30, 30, 10
    out = quantize._cast_matmul(x, q, s)
    assert out.dtype == dtype and out.shape == (70, 100)
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(out.float(), whole.float(), atol=tol * float(whole.abs().max()), rtol=0)


@pytest.mark.parametrize("preset", ["debug", "debug-pg2"])
def test_quantised_logits_within_tolerance(preset):
    model = _model(preset)
    ids, px = _inputs(model.cfg)
    with torch.no_grad():
        ref = model(ids, px)
        quantize_int8(model)
        out = model(ids, px)
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < LOGIT_TOL, rel
    assert rel > 0  # it really changed the weights
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_modules_replaced_vision_skipped_and_state_smaller():
    model = _model("debug")
    before = state_bytes(model)
    quantize_int8(model)
    lm = model.language_model
    assert isinstance(lm.layers[0].self_attn.q_proj, Int8Linear)
    assert isinstance(lm.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(lm.embed_tokens, Int8Embedding)
    assert not any(isinstance(m, Int8Linear) for m in model.vision_tower.modules())
    assert isinstance(model.projector, Int8Linear)
    after = state_bytes(model)
    lm_float = sum(p.numel() for p in PaliGemma(model.cfg).language_model.parameters()) * 4
    # fp32 -> int8 + one fp32 scale per row: the language model shrinks by ~4x.
    assert after < before - 0.6 * lm_float, (before, after)


def test_quantised_greedy_generation_runs_and_mostly_agrees():
    class Tok:
        eos_id = -1

        def decode(self, ids):
            return " ".join(map(str, ids))

    model = _model("debug")
    ids, px = _inputs(model.cfg)
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px)
    cfg = SamplingConfig(max_new_tokens=6)
    ref = generate(model, Tok(), batch, cfg)
    quantize_int8(model)
    out = generate(model, Tok(), batch, cfg)
    assert [len(r.token_ids) for r in out] == [6, 6]
    assert out[0].token_ids[0] == ref[0].token_ids[0] and out[1].token_ids[0] == ref[1].token_ids[0]


# --- schemes through the pipeline: save / reload exactly (safetensors), flags checked -----------

@pytest.fixture(scope="module")
def tiny_image():
    from PIL import Image

    return Image.new("RGB", (64, 64), (200, 30, 30))


def _pipe_logits(pipe, image) -> torch.Tensor:
    batch = pipe._model_inputs(pipe.processor(["caption en"], [[image]], padding_side="left"))
    with torch.no_grad():
        return pipe.model(**batch)


@pytest.mark.parametrize("scheme,dtype", [("int8", "bfloat16"), ("int8-dyn", "bfloat16"), ("int8-dyn", "float32"),
                                          ("int4-g32", "float32"), ("int4", "bfloat16")])
def test_saved_quantised_folder_reloads_bit_exact(scheme, dtype, tiny_image, tmp_path):
    import json

    import vlmkit
    from vlmkit.generation.quant import QUANT_KEY

    pipe = vlmkit.load(None, dtype=dtype, quantize=scheme)
    folder = pipe.save_quantized(tmp_path / "q")
    files = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" in files and "tokenizer.model" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert json.loads((folder / "config.json").read_text())[QUANT_KEY]["scheme"] == pipe.model.quantization.name
    again = vlmkit.load(folder, dtype=dtype)
    assert again.model.quantization == pipe.model.quantization
    assert torch.equal(_pipe_logits(again, tiny_image), _pipe_logits(pipe, tiny_image))
    cfg = SamplingConfig(max_new_tokens=8)
    assert again.generate("caption en", tiny_image, cfg).token_ids == pipe.generate("caption en", tiny_image, cfg).token_ids


def test_quantised_folder_is_loaded_strictly(tmp_path):
    import vlmkit
    from safetensors.torch import load_file, save_file

    from vlmkit.errors import CheckpointError, ConfigError

    folder = vlmkit.load(None, dtype="float32", quantize="int8").save_quantized(tmp_path / "q")
    with pytest.raises(ConfigError, match="already quantised"):
        vlmkit.load(folder, quantize="int4")
    state = load_file(folder / "model.safetensors")
    state.pop(next(k for k in state if k.endswith("weight_int8")))
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        vlmkit.load(folder)


def test_load_checks_speed_arguments():
    import vlmkit
    from vlmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="group size"):
        vlmkit.load(None, group_size=32)
    with pytest.raises(ConfigError, match="unknown quantisation"):
        vlmkit.load(None, quantize="int2")
