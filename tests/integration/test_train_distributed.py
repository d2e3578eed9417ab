"""`torchrun --nproc-per-node 2` on CPU (gloo): DDP and FSDP2 match a one-process run.

The global batch is the same (data.batch_size is global; each rank takes every 2nd example of
the shared permutation and the loss is normalised by the global suffix-token count), so losses
and weights agree up to float reduction order.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["finetune", "--smoke", "--steps", "4", "--export", "false", "--ckpt_every", "2",
        "--freeze.vision_tower", "false"]


def losses(out: Path) -> list[float]:
    import json

    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_train([*ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_ranks_match_single_process(tmp_path: Path, single: Path, strategy: str):
    if not TORCHRUN.is_file():
        pytest.skip(f"{TORCHRUN} not found")
    out = tmp_path / strategy
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "vlmkit.training.cli", *ARGS,
           "--out", str(out), "--parallel.strategy", strategy]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("step 4/4") == 1  # rank 0 logs alone
    assert f"strategy={strategy} x2" in proc.stdout
    assert losses(out) == pytest.approx(losses(single), rel=1e-5)
    ref, got = weights(single), weights(out)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
