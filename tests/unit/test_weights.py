"""Strict loading, sharding, atomic saving and dtype choice."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.weights.dtype import resolve_dtype
from vlmkit.weights.hf import load_hf, save_hf
from vlmkit.weights.registry import resolve_model


@pytest.fixture
def folder(tmp_path):
    model = init_weights(PaliGemma(PaliGemmaConfig.from_preset("debug")), seed=0)
    return save_hf(model, tmp_path / "ckpt"), model


def _rewrite(folder, fn):
    path = folder / "model.safetensors"
    tensors = fn(load_file(path))
    save_file(tensors, path)


def test_roundtrip_is_bit_identical(folder):
    path, model = folder
    again = load_hf(path, dtype="float32")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_sharded_equals_single(folder, tmp_path):
    _, model = folder
    sharded = save_hf(model, tmp_path / "sharded", max_shard_bytes=50_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    again = load_hf(sharded, dtype="float32")
    for v, v2 in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(v, v2)


def test_missing_key_named(folder):
    path, _ = folder
    _rewrite(path, lambda t: {k: v for k, v in t.items() if "layers.1.mlp.up_proj" not in k})
    with pytest.raises(CheckpointError, match=r"missing keys: language_model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(path)


def test_unexpected_key_named(folder):
    path, _ = folder
    _rewrite(path, lambda t: {**t, "language_model.model.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: language_model\.model\.extra\.weight"):
        load_hf(path)


def test_misshaped_key_named(folder):
    path, _ = folder
    key = "multi_modal_projector.linear.bias"
    _rewrite(path, lambda t: {**t, key: torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"mis-shaped: multi_modal_projector\.linear\.bias \(3,\)"):
        load_hf(path)


def test_config_mismatch_names_keys(folder):
    """A config.json that promises more layers than the weights hold is caught, naming the keys."""
    path, _ = folder
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys: .*language_model\.layers\.2\."):
        load_hf(path)


def test_corrupt_files(folder):
    path, _ = folder
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_hf(path)


def test_corrupt_safetensors(folder):
    path, _ = folder
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_hf(path)


def test_index_with_missing_shard(folder, tmp_path):
    _, model = folder
    sharded = save_hf(model, tmp_path / "sharded", max_shard_bytes=50_000)
    next(sharded.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="lists shard .* which does not exist"):
        load_hf(sharded)


def test_atomic_save_leaves_old_folder_on_failure(folder, monkeypatch):
    path, model = folder
    before = sorted(p.name for p in path.iterdir())

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("vlmkit.weights.hf.write_state_dict", boom)
    with pytest.raises(OSError):
        save_hf(model, path)
    assert sorted(p.name for p in path.iterdir()) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ckpt.tmp")]


def test_load_in_bf16_keeps_rope_exact(folder):
    path, _ = folder
    m = load_hf(path, dtype="bfloat16")
    assert m.projector.weight.dtype == torch.bfloat16
    ids = torch.full((1, 20), 5)
    ids[0, :16] = m.cfg.image_token_id
    out = m(ids, torch.randn(1, 3, 32, 32))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_dtype_resolution():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(None, "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError):
        resolve_dtype("int3")


def test_registry_errors(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder nor a bundled model"):
        resolve_model(tmp_path / "nope")
    assert resolve_model(tmp_path) == tmp_path
