"""Training-step throughput and memory: PaliGemma fine-tuning with/without activation checkpointing,
and a SigLIP contrastive step vs open_clip (where open_clip is installed).

    python benchmarks/bench_train.py [--case shapes-tiny|mid-300m|debug] [--batch 4] [--steps 3]
    python benchmarks/bench_train.py --siglip [--open-clip-python /path/to/venv/bin/python]

PaliGemma: one full fine-tuning step (SuffixLMLoss forward, backward, AdamW) with vlmkit's
training engine (`vlmkit.training.trainer.SuffixLMLoss`,
`vlmkit.training.parallelize.apply_activation_checkpointing`), in a fresh subprocess per setting
so each peak is its own. Memory: peak RSS of the process, and the activation peak = peak RSS
during the timed steps minus RSS at their start (weights, grads and optimizer state already
allocated), via /proc/self/clear_refs; on CUDA, torch.cuda.max_memory_allocated.

SigLIP vs open_clip: open_clip pulls torchvision, which must never be installed into the vlmkit
environment; point --open-clip-python at another environment's interpreter that has open_clip
(and vlmkit importable, e.g. `pip install -e .` there). Without it the comparison is skipped and
the script says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import format_table, peak_rss_mb, ratio  # noqa: E402


def _rss_now_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _timed_steps(step, steps: int, device: torch.device) -> dict:
    step()  # warm-up: allocates gradients and optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _reset_peak()
    base = _rss_now_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {"step_s": min(times), "samples": times, "loss": float(loss), "peak_rss_mb": peak_rss_mb(),
           "activation_peak_mb": peak_rss_mb() - base}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def paligemma_worker(case: str, batch: int, text_len: int, ckpt: bool, steps: int, dtype: str) -> dict:
    """One setting, in this process: build, optionally checkpoint, time `steps` training steps."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_generate import case_config, make_batch

    from vlmkit.data.processor import IGNORE_INDEX
    from vlmkit.models.common.init import init_weights
    from vlmkit.models.paligemma import PaliGemma
    from vlmkit.models.paligemma.config import PaliGemmaConfig
    from vlmkit.training.parallelize import apply_activation_checkpointing
    from vlmkit.training.trainer import SuffixLMLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = PaliGemmaConfig.from_preset("shapes-tiny") if case == "shapes-tiny" else case_config(case)
    model = init_weights(PaliGemma(cfg), seed=0).to(device, getattr(torch, dtype)).train()
    if ckpt:
        apply_activation_checkpointing(model)
    loss_fn = SuffixLMLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = {k: v.to(device) for k, v in make_batch(cfg, batch, text_len, dtype, seed=0).items()}
    b["token_type_ids"][:, -text_len // 2:] = 1  # the second half of the text is the trained suffix
    b["labels"] = b["input_ids"].masked_fill(b["token_type_ids"] == 0, IGNORE_INDEX)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(**b)
        loss.backward()
        opt.step()
        return loss.detach()

    out = _timed_steps(step, steps, device)
    out["samples_per_s"] = batch / out["step_s"]
    return out


def run_paligemma(args) -> list[dict]:
    rows = []
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--worker", json.dumps(
            {"case": args.case, "batch": args.batch, "text_len": args.text_len, "ckpt": ckpt,
             "steps": args.steps, "dtype": args.dtype})]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append({"model": f"paligemma {args.case} {args.dtype}", "activation ckpt": ckpt, **res})
    base = rows[0]
    for r in rows:
        r["speed x no-ckpt"] = ratio(r["samples_per_s"], base["samples_per_s"])
        r["activation mem x no-ckpt"] = ratio(r["activation_peak_mb"], base["activation_peak_mb"])
    return rows


SIGLIP_SNIPPET = r"""
import json, sys, time, torch
try:
    import open_clip
except ImportError as e:
    print(json.dumps({"missing": str(e)})); sys.exit(0)
batch, steps = int(sys.argv[1]), int(sys.argv[2])
model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).train()
loss_fn = open_clip.loss.SigLipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
g = torch.Generator().manual_seed(0)
px = torch.randn(batch, 3, 224, 224, generator=g)
ids = torch.randint(1, 32000, (batch, 64), generator=g)
def step():
    opt.zero_grad(set_to_none=True)
    img, txt, scale, bias = model(px, ids)[:4]  # features, exp(logit_scale), logit_bias
    loss = loss_fn(img, txt, scale, bias)
    loss.backward(); opt.step(); return loss
step(); times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"step_s": min(times), "samples_per_s": batch / min(times)}))
"""


def vlmkit_siglip_step(batch: int, steps: int) -> dict:
    """SigLIP B/16 two-tower (vlmkit) contrastive training step at 224 px, text length 64."""
    from vlmkit.models.common.init import init_weights
    from vlmkit.models.siglip.config import TWO_TOWER_PRESETS
    from vlmkit.models.siglip.two_tower import SiglipTwoTower

    model = init_weights(SiglipTwoTower(TWO_TOWER_PRESETS["base-patch16-224"]), seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    px = torch.randn(batch, 3, 224, 224, generator=g)
    ids = torch.randint(1, 32000, (batch, 64), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(model(px, ids))
        loss.backward()
        opt.step()
        return loss.detach()

    out = _timed_steps(step, steps, torch.device("cpu"))
    out["samples_per_s"] = batch / out["step_s"]
    return out


def run_siglip(args) -> list[dict]:
    python = args.open_clip_python or sys.executable
    oc = subprocess.run([python, "-c", SIGLIP_SNIPPET, str(args.batch), str(args.steps)],
                        capture_output=True, text=True)
    if oc.returncode == 0 and oc.stdout:
        reply = json.loads(oc.stdout.splitlines()[-1])
    else:
        reply = {"missing": oc.stderr[-300:]}
    ours = {"model": "siglip b16-224 vlmkit", **vlmkit_siglip_step(args.batch, args.steps)}
    if "missing" in reply:
        print(f"open_clip NOT AVAILABLE in {python} ({reply['missing'].strip()}): SigLIP comparison skipped. "
              "Install open_clip (it pulls torchvision) into a separate environment and pass "
              "--open-clip-python /that/env/bin/python.")
        return [ours]
    theirs = {"model": "siglip b16-224 open_clip", **reply}
    ours["x open_clip"] = ratio(ours["samples_per_s"], theirs["samples_per_s"])
    return [ours, theirs]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="shapes-tiny", help="shapes-tiny, debug or mid-300m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--siglip", action="store_true", help="also run the SigLIP step (vs open_clip if present)")
    p.add_argument("--open-clip-python", help="interpreter of an environment with open_clip installed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(paligemma_worker(**json.loads(args.worker))))
        return
    rows = run_paligemma(args) + (run_siglip(args) if args.siglip else [])
    cols = ["model", "activation ckpt", "samples_per_s", "speed x no-ckpt", "peak_rss_mb", "activation_peak_mb",
            "activation mem x no-ckpt", "x open_clip"]
    print(format_table(rows, cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
