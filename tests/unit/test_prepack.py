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


@needs_onednn_bf16
def test_load_with_prepack_packs_and_answers_as_plain():
    """`vlmkit.load(..., prepack=True)` (what `--prepack` passes) packs the bundled model's decoder and
    its greedy tokens and logits equal the plain bf16 pipeline's."""
    import vlmkit
    from vlmkit.weights.registry import bundled_models

    if "vlmkit-shapes-tiny" not in bundled_models():
        pytest.skip("no bundled model")
    plain, packed = vlmkit.load(None, dtype="bfloat16"), vlmkit.load(None, dtype="bfloat16", prepack=True)
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    from PIL import Image

    batch = plain.processor(["caption en", "detect cat"], [[Image.new("RGB", (64, 64), (200, 30, 30))]] * 2,
                            padding_side="left")
    sampling = SamplingConfig(max_new_tokens=8)
    a = generate(plain.model, plain.tokenizer, batch, sampling, output_logits=True)
    b = generate(packed.model, packed.tokenizer, batch, sampling, output_logits=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert all(torch.equal(x.logits, y.logits) for x, y in zip(a, b))


def test_prepack_in_float32_warns_and_stays_plain(caplog):
    import vlmkit

    with caplog.at_level("WARNING"):
        pipe = vlmkit.load(None, dtype="float32", prepack=True)
    assert not any(isinstance(m, PackedLinear) for m in pipe.model.modules())
    assert "prepack needs bfloat16" in caplog.text


def test_prepack_with_compile_is_one_config_error():
    import vlmkit
    from vlmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="prepack combines with compile only in mode max-autotune"):
        vlmkit.load(None, prepack=True, compile=True)


def test_cli_prepack_flag_reaches_load(monkeypatch):
    from vlmkit import cli_types as T
    from vlmkit.cli import build_parser

    args = build_parser().parse_args(["generate", "--prepack", "--image", "x.png"])
    assert T.speed_kwargs(args)["prepack"] is True
    assert T.speed_kwargs(build_parser().parse_args(["generate", "--image", "x.png"]))["prepack"] is False


def test_prepack_with_compile_mode_max_autotune_loads():
    """The one compile mode packed kernels lower in (frozen weights): accepted; it compiles lazily,
    at the first generation (tests/unit/test_compile_freezing.py runs it)."""
    import vlmkit

    pipe = vlmkit.load(None, dtype="bfloat16", prepack=True, compile="max-autotune")
    assert pipe.decode_fn is not None and pipe.decode_fn.freezing == pipe.decode_fn.compiled
