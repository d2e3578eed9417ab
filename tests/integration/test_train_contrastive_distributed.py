"""`torchrun --nproc-per-node 2` on CPU (gloo): contrastive training matches one process.

Same global batch: data.batch_size is global and each rank takes every 2nd example of the shared
permutation. The SigLIP loss runs its ring (chunked) form across the two ranks, the CLIP/CoCa
losses their all-gather form, and the CoCa caption mean is re-weighted by the global token
count, so the loss of every step and the final weights equal the single-process run's up to
float reduction order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.recipes.contrastive import main

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--smoke", "--steps", "4", "--export", "false", "--ckpt_every", "2"]


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def single_run(out: Path, recipe: str) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([recipe, *ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in cache:
            cache[recipe] = single_run(tmp_path_factory.mktemp(f"single-{recipe}"), recipe)
        return cache[recipe]

    return get


@pytest.mark.distributed
@pytest.mark.parametrize("recipe,strategy", [("siglip", "ddp"), ("siglip", "fsdp"), ("coca", "ddp")])
def test_torchrun_two_ranks_match_single_process(tmp_path: Path, reference, recipe: str, strategy: str):
    if not TORCHRUN.is_file():
        pytest.skip(f"{TORCHRUN} not found")
    single = reference(recipe)
    out = tmp_path / strategy
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "vlmkit.training.recipes.contrastive",
           recipe, *ARGS, "--out", str(out), "--parallel.strategy", strategy]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("step 4/") == 1  # rank 0 logs alone
    assert f"strategy={strategy} x2" in proc.stdout and "i2t_r1" in proc.stdout
    assert losses(out) == pytest.approx(losses(single), rel=1e-5)
    ref, got = weights(single), weights(out)
    assert ref.keys() == got.keys()
    for k in ref:
        # An attention key bias shifts all of a query's logits equally, so its true gradient is 0 and
        # what it gets is float noise, which Adam normalises into +-lr steps: only bounded by lr.
        atol = 1e-2 if k.endswith("k_proj.bias") else 2e-5
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.distributed
def test_torchrun_trains_the_itm_head_alike_under_ddp_and_fsdp(tmp_path: Path):
    """With --itm.weight the head is the root's own parameter: DDP and FSDP2 train it alike (each
    rank draws its negatives from the global batch with its own seed, the same under both), and
    the export holds it."""
    if not TORCHRUN.is_file():
        pytest.skip(f"{TORCHRUN} not found")
    runs = {}
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "vlmkit.training.recipes.contrastive",
               "siglip", "--smoke", "--steps", "4", "--ckpt_every", "2", "--out", str(out), "--parallel.strategy",
               strategy, "--itm.weight", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "export" / "itm_head.safetensors").is_file()
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(m["itm"] > 0 for m in metrics if "loss" in m)
        runs[strategy] = out
    assert losses(runs["fsdp"]) == pytest.approx(losses(runs["ddp"]), rel=1e-5)
    ref, got = weights(runs["ddp"]), weights(runs["fsdp"])
    assert ref.keys() == got.keys() and any(k.startswith("itm_head.") for k in ref)
    for k in ref:
        atol = 1e-2 if k.endswith("k_proj.bias") else 2e-5  # see test_torchrun_two_ranks_match_single_process
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=atol, msg=lambda m: f"{k}: {m}")
