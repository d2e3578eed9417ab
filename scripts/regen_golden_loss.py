"""Regenerate tests/assets/golden_loss_curve.json (the 20-step finetune smoke loss curve).

Run from the repository root: ``python scripts/regen_golden_loss.py``. Only do this when a change
to the training maths is intended; the regression test compares against this file.
"""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.regression.test_loss_curve import GOLDEN, OVERRIDES, golden_losses  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        losses = golden_losses(Path(tmp) / "run")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({"overrides": OVERRIDES, "losses": losses}, indent=1) + "\n")
    print(f"wrote {len(losses)} losses to {GOLDEN}: {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
