"""Kill-and-resume gives the uninterrupted run's exact losses and weights; NaN stops cleanly."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlmkit.training.collate as collate_mod
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.config import apply_overrides
from vlmkit.training.recipes import get_recipe, run
from vlmkit.training.trainer import NonFiniteLossError

STEPS = 8  # 32 examples, 8 per step: two epochs, so resumes cross an epoch boundary


def config(out: Path, **extra):
    cfg = get_recipe("finetune", smoke=True)  # 8 synthetic scenes x 4 examples, batch 4 x accum 2
    return apply_overrides(cfg, {"out_dir": str(out), "steps": str(STEPS), "ckpt_every": "0",
                                 "export": "false", "data.batch_size": "8", **extra})


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def assert_same_run(a_out: Path, a_losses, b_out: Path, b_losses):
    assert b_losses == a_losses  # exact float equality, step by step
    wa, wb = final_weights(a_out), final_weights(b_out)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("stop,extra", [
    (3, {}),  # mid-epoch
    (4, {"lora.enabled": "true", "lora.dropout": "0.2", "optim.lr": "1e-2"}),  # epoch end, RNG (dropout)
])
def test_kill_and_resume_is_identical(tmp_path, stop, extra):
    full = run(config(tmp_path / "full", **extra))
    assert len(full.losses) == STEPS
    first = run(config(tmp_path / "split", stop_after=str(stop), **extra))
    assert first.step == stop and first.export is None
    second = run(config(tmp_path / "split", **extra), resume=True)
    assert second.step == STEPS
    assert_same_run(tmp_path / "full", full.losses, tmp_path / "split", second.losses)


def test_nan_loss_stops_after_saving_last_good_state(tmp_path, monkeypatch):
    full = run(config(tmp_path / "full"))
    real, calls = collate_mod.collate, []

    def poisoned(samples, processor):
        batch = real(samples, processor)
        calls.append(1)
        if len(calls) == 7:  # first micro-batch of step 4
            batch["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
        return batch

    monkeypatch.setattr(collate_mod, "collate", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4; .*step_000003"):
        run(config(tmp_path / "nan"))
    assert latest_checkpoint(tmp_path / "nan" / "checkpoints").name == "step_000003"
    monkeypatch.setattr(collate_mod, "collate", real)
    resumed = run(config(tmp_path / "nan"), resume=True)  # the saved state is exactly step 3's
    assert_same_run(tmp_path / "full", full.losses, tmp_path / "nan", resumed.losses)


def test_existing_run_needs_resume_flag(tmp_path):
    run(config(tmp_path, stop_after="1"))
    with pytest.raises(Exception, match="pass --resume"):
        run(config(tmp_path))
