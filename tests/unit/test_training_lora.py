"""LoRA adapters: only adapters train, merge equals the adapter model, save/load round trip."""

import pytest
import torch

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.training.config import LoraConfig
from vlmkit.training.lora import LoRALinear, apply_lora, load_lora, lora_modules, merge_lora, save_lora


def base_model() -> PaliGemma:
    return init_weights(PaliGemma(PaliGemmaConfig.from_preset("debug")), seed=0).eval()


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 500, (2, 24), generator=g)
    ids[:, :16] = 511
    types = torch.zeros_like(ids)
    types[:, 20:] = 1
    return ids, torch.randn(2, 3, 32, 32, generator=g), torch.ones_like(ids), types


def adapted(cfg=LoraConfig(rank=4, alpha=8.0)) -> PaliGemma:
    model = base_model()
    apply_lora(model, cfg)
    torch.manual_seed(1)
    for m in lora_modules(model).values():  # B starts at zero; make the update non-trivial
        torch.nn.init.normal_(m.lora_B, std=0.1)
    return model


def test_only_adapters_train_and_start_as_identity():
    model, ref = base_model(), base_model()
    names = apply_lora(model, LoraConfig(rank=4))
    assert len(names) == 2 * 7  # q k v o gate up down in each of the 2 decoder layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs()), ref(*inputs()), rtol=0, atol=0)


def test_merged_model_equals_adapter_model():
    model = adapted()
    with torch.no_grad():
        want = model(*inputs())
        merge_lora(model)
        got = model(*inputs())
    assert not lora_modules(model)
    assert set(model.state_dict()) == set(base_model().state_dict())  # plain names again
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_save_and_load_adapters(tmp_path):
    cfg = LoraConfig(rank=4, alpha=8.0, dropout=0.1)
    model = adapted(cfg)
    path = save_lora(model, tmp_path / "adapters.safetensors", cfg)
    fresh = load_lora(base_model(), path)
    assert isinstance(fresh.language_model.layers[0].self_attn.q_proj, LoRALinear)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(*inputs()), model.eval()(*inputs()), rtol=0, atol=0)


def test_load_into_a_different_layout_fails(tmp_path):
    cfg = LoraConfig(rank=4)
    path = save_lora(adapted(cfg), tmp_path / "a.safetensors", cfg)
    other = base_model()
    apply_lora(other, LoraConfig(rank=4, targets=(r"q_proj$",)))
    with pytest.raises(CheckpointError, match="adapter keys do not match"):
        load_lora(other, path)
    with pytest.raises(CheckpointError, match="not a vlmkit LoRA adapter"):
        load_lora(base_model(), tmp_path / "missing.safetensors")


def test_targets_must_match_something():
    with pytest.raises(ConfigError, match="match no nn.Linear"):
        apply_lora(base_model(), LoraConfig(targets=(r"nothing_here",)))
    with pytest.raises(ConfigError, match="invalid regex"):
        apply_lora(base_model(), LoraConfig(targets=("(",)))
