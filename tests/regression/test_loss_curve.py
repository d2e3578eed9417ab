"""Golden 20-step loss curve of the finetune smoke recipe (fp32, CPU, fixed seeds).

A change here means the training maths changed (loss normalisation, schedule, init, data order,
tokenizer, model). If the change is intended, regenerate with
``python scripts/regen_golden_loss.py`` and explain why in the commit.
"""

import json
from pathlib import Path

import pytest
import torch

from vlmkit.training.config import apply_overrides
from vlmkit.training.recipes import get_recipe, run

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_loss_curve.json"
OVERRIDES = {"steps": "20", "data.batch_size": "8", "data.grad_accum": "2", "optim.lr": "3e-3",
             "optim.warmup_steps": "3", "ckpt_every": "0", "export": "false", "log_every": "100"}


def golden_losses(out_dir: Path) -> list[float]:
    """Train the golden configuration in `out_dir` (single thread) and return its losses."""
    cfg = apply_overrides(get_recipe("finetune", smoke=True), {**OVERRIDES, "out_dir": str(out_dir)})
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order, and no spin-waiting on shared cores
    try:
        return run(cfg).losses
    finally:
        torch.set_num_threads(n)


def test_loss_curve_matches_golden(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    assert golden["overrides"] == OVERRIDES, "golden file is stale: run scripts/regen_golden_loss.py"
    losses = golden_losses(tmp_path)
    assert len(losses) == 20
    # Float reduction order differs across CPUs/BLAS builds; the curve must agree to 1e-4 relative.
    assert losses == pytest.approx(golden["losses"], rel=1e-4, abs=1e-5)
    assert losses[-1] < losses[0] - 1.0  # and it is a learning curve, not noise
