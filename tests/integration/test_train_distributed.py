"""`torchrun --nproc-per-node 2` on CPU (gloo): DDP and FSDP2 match a one-process run, and a
checkpoint resumes on another number of ranks.

The global batch is the same (data.batch_size is global; each rank takes every 2nd example of
the shared permutation and the loss is normalised by the global suffix-token count), so losses
and weights agree up to float reduction order.
"""

import json
import os
import shutil
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


def _rewind_to_step_2(out: Path) -> None:
    """Drop the step-4 checkpoint, as if the run had been killed after step 2's."""
    root = out / "checkpoints"
    shutil.rmtree(root / "step_000004")
    (root / "latest").write_text("step_000002")


def _saved_losses(out: Path) -> list[float]:
    return json.loads((latest_checkpoint(out / "checkpoints") / "trainer_state.json").read_text())["losses"]


@pytest.mark.distributed
def test_resume_on_another_number_of_ranks(tmp_path: Path, single: Path):
    """A 2-rank DDP run stopped at step 2 resumes in one process, and the one-process run stopped
    at step 2 resumes on 2 FSDP ranks: both end where the uninterrupted one-process run ends."""
    if not TORCHRUN.is_file():
        pytest.skip(f"{TORCHRUN} not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two_then_one"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "vlmkit.training.cli", *ARGS]
    proc = subprocess.run([*cmd, "--out", str(two), "--parallel.strategy", "ddp"], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _rewind_to_step_2(two)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_train([*ARGS, "--out", str(two), "--resume"]) == 0
    finally:
        torch.set_num_threads(n)
    one = tmp_path / "one_then_two"
    shutil.copytree(single, one)
    _rewind_to_step_2(one)
    proc = subprocess.run([*cmd, "--out", str(one), "--parallel.strategy", "fsdp", "--resume"], capture_output=True,
                          text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 1 rank(s), this run has 2" in proc.stdout
    ref = weights(single)
    for out in (two, one):
        assert _saved_losses(out) == pytest.approx(losses(single), rel=1e-5)
        got = weights(out)
        assert ref.keys() == got.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=2e-5, msg=lambda m: f"{k}: {m}")
