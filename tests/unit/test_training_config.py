"""Config overrides, the LR schedule and the `vlmkit train` argument handling."""

import math

import pytest

from vlmkit.errors import ConfigError
from vlmkit.training.cli import parse_overrides, run_train
from vlmkit.training.config import TrainConfig, apply_overrides, config_from_dict
from vlmkit.training.optim import lr_factor


def test_overrides_are_typed():
    cfg = apply_overrides(TrainConfig(), {
        "optim.lr": "3e-4", "steps": "7", "freeze.vision_tower": "true", "precision": "bf16",
        "optim.grad_clip": "none", "optim.betas": "0.8,0.95", "lora.targets": "a,b", "model.image_size": "64",
    })
    assert cfg.optim.lr == 3e-4 and cfg.steps == 7 and cfg.freeze.vision_tower is True
    assert cfg.precision == "bf16" and cfg.optim.grad_clip is None and cfg.optim.betas == (0.8, 0.95)
    assert cfg.lora.targets == ("a", "b") and cfg.model.image_size == 64
    assert TrainConfig().optim.lr == 1e-4  # the default instance is not modified


@pytest.mark.parametrize("key,value,message", [
    ("optim.lrr", "1", "did you mean 'lr'"),
    ("nope", "1", "unknown config key 'nope'"),
    ("steps", "ten", "steps must be int"),
    ("freeze.vision_tower", "maybe", "true or false"),
    ("precision", "fp8", "must be one of"),
    ("optim.betas", "0.9", "needs 2"),
    ("optim", "1", "is a group"),
    ("steps.x", "1", "not a group"),
])
def test_bad_overrides_raise_config_error(key, value, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), {key: value})


def test_config_round_trips_through_dict():
    cfg = apply_overrides(TrainConfig(), ["optim.betas=0.5,0.6", "lora.enabled=1"])
    assert config_from_dict(cfg.to_dict()) == cfg


def test_micro_batch_size_must_divide():
    cfg = apply_overrides(TrainConfig(), {"data.batch_size": "12", "data.grad_accum": "2"})
    assert cfg.micro_batch_size(2) == 3
    with pytest.raises(ConfigError, match="does not split"):
        cfg.micro_batch_size(4)


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, 10, 2, 0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0)  # cosine starts at the peak
    assert all(a > b for a, b in zip(f[2:], f[3:]))  # strictly decaying
    assert f[-1] > 0.1 and f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_parse_overrides_forms():
    got = parse_overrides(["--optim.lr", "1e-3", "--lora.enabled", "--steps=5", "--freeze.vision-tower", "no"])
    assert got == {"optim.lr": "1e-3", "lora.enabled": "true", "steps": "5", "freeze.vision_tower": "no"}
    with pytest.raises(ConfigError):
        parse_overrides(["stray"])


def test_cli_reports_bad_override_in_one_line(tmp_path, capsys):
    code = run_train(["finetune", "--smoke", "--out", str(tmp_path), "--optim.lrr", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "optim.lrr" in err and "did you mean 'lr'" in err


def test_cli_missing_data_is_config_error(tmp_path, capsys):
    assert run_train(["finetune", "--model", "debug", "--out", str(tmp_path)]) == 2
    assert "data.manifest is required" in capsys.readouterr().err
