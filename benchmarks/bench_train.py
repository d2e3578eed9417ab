"""Training-step throughput, memory and FLOP floors: PaliGemma fine-tuning with/without activation
checkpointing, and SigLIP / CoCa contrastive steps against open_clip (where open_clip is installed).

    python benchmarks/bench_train.py [--case shapes-tiny|mid-300m|debug|none] [--batch 4] [--steps 3]
    python benchmarks/bench_train.py --siglip --coca [--open-clip-python /path/to/venv/bin/python]
    python benchmarks/bench_train.py --siglip --coca --tiny --case debug   # seconds: CI smoke mode
    python benchmarks/bench_train.py --case none --siglip --threads 1 --contrastive-batch 8 --steps 5 \
        --open-clip-python /tmp/oc-venv/bin/python --json benchmarks/results/train-siglip-cpu.json

PaliGemma: one full fine-tuning step (SuffixLMLoss forward, backward, AdamW) with vlmkit's
training engine (`vlmkit.training.trainer.SuffixLMLoss`,
`vlmkit.training.parallelize.apply_activation_checkpointing`), in a fresh subprocess per setting
so each peak is its own. Memory: peak RSS of the process, and the activation peak = peak RSS
during the timed steps minus RSS at their start (weights, grads and optimizer state already
allocated), via /proc/self/clear_refs; on CUDA, torch.cuda.max_memory_allocated.

SigLIP / CoCa vs open_clip (see _train_workers.py for the exact models and losses): each
framework runs in its own long-lived subprocess (its peak RSS is its own); after an untimed
warm-up step the parent asks them for steps in turn (A, B, A, B, ...) and reports the best (and the median).
open_clip pulls torchvision, which must never be installed into the vlmkit environment: make
another environment with open_clip and vlmkit (`pip install -e .` there), run this script with
its interpreter so that both sides use the same torch, and pass --open-clip-python (normally
that same interpreter). Without it the open_clip side is skipped and the script says so.
`--precision` (SigLIP / CoCa): bf16 = bf16 autocast on both sides (float32 weights and AdamW),
the default where the CPU has native bf16 (AVX512-BF16 / AMX), else fp32. Making that other
environment (torchvision's PyPI wheel needs PyPI's torch build, not a +cpu one):

    python3 -m venv /tmp/oc-venv && /tmp/oc-venv/bin/pip install torch==2.13.0 torchvision==0.28.0 \
        open_clip_torch==3.3.0 safetensors tokenizers sentencepiece protobuf pillow numpy jinja2
    /tmp/oc-venv/bin/pip install --no-deps -e .

Floor: the step's matmul FLOPs (linear, conv, attention; forward and backward, counted on the
warm-up step by `_common.count_flops`) / the fp32 dense matmul rate measured at the start with
the same thread count (the bf16 rate for the bf16 contrastive steps). `frac` = floor / measured
step time (1.0 = every FLOP at the matmul rate; the optimizer, norms, activations and the loss are
all overhead in this measure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (Worker, count_flops, format_table, measure_matmul_rate, peak_rss_mb, ratio,  # noqa: E402
                     run_metadata)

TRAIN_WORKER = str(Path(__file__).with_name("_train_workers.py"))


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
    _, flops = count_flops(step)  # warm-up: allocates gradients and optimizer state
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
           "activation_peak_mb": peak_rss_mb() - base, "flops_per_step": flops}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def paligemma_worker(case: str, batch: int, text_len: int, ckpt: bool, steps: int, dtype: str,
                     threads: int) -> dict:
    """One setting, in this process: build, optionally checkpoint, time `steps` training steps."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _families import case_config, make_batch

    from vlmkit.data.processor import IGNORE_INDEX
    from vlmkit.models.common.init import init_weights
    from vlmkit.models.paligemma import PaliGemma
    from vlmkit.training.parallelize import apply_activation_checkpointing
    from vlmkit.training.trainer import SuffixLMLoss

    if threads > 0:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = case_config("paligemma", case)  # shapes-tiny and debug are presets, mid-300m a benchmark shape
    model = init_weights(PaliGemma(cfg), seed=0).to(device, getattr(torch, dtype)).train()
    if ckpt:
        apply_activation_checkpointing(model)
    loss_fn = SuffixLMLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = {k: v.to(device) for k, v in make_batch("paligemma", cfg, batch, text_len, dtype, seed=0).items()}
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
    out["params"] = sum(p.numel() for p in model.parameters())
    return out


def run_paligemma(args, matmul_rate: float) -> list[dict]:
    rows = []
    for ckpt in (False, True):
        cmd = [sys.executable, __file__, "--worker", json.dumps(
            {"case": args.case, "batch": args.batch, "text_len": args.text_len, "ckpt": ckpt,
             "steps": args.steps, "dtype": args.dtype, "threads": args.threads})]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        rows.append({"model": f"paligemma {args.case} {args.dtype}", "activation ckpt": ckpt, **res})
    base = rows[0]
    for r in rows:
        r["speed x no-ckpt"] = ratio(r["samples_per_s"], base["samples_per_s"])
        r["activation mem x no-ckpt"] = ratio(r["activation_peak_mb"], base["activation_peak_mb"])
        # The floor is the model's: checkpointing's recomputed forward is overhead, not work.
        r["floor_s"] = base["flops_per_step"] / matmul_rate
        r["frac"] = r["floor_s"] / r["step_s"]
    return rows


def _start(framework: str, model: str, args, python: str | None) -> tuple[Worker | None, dict | str]:
    """Start a worker and build its model; (worker, build reply) or (None, why it is unavailable)."""
    argv = [TRAIN_WORKER, framework, model, str(args.contrastive_batch), str(args.threads), args.precision]
    try:
        w = Worker(argv + (["tiny"] if args.tiny else []), framework, python=python)
    except OSError as e:
        return None, str(e)
    try:
        return w, w.ask("build")
    except RuntimeError as e:
        w.close()
        return None, str(e)


def run_contrastive(model: str, args, matmul_rate: float) -> list[dict]:
    """vlmkit vs open_clip (when available) on one model; one row per framework."""
    print(f"{model}: building (vlmkit{'' if args.tiny else ', open_clip'}) and warming up ...", flush=True)
    workers, builds = {}, {}
    why = "no --open-clip-python given"
    for framework, python in (("vlmkit", None), ("open_clip", None if args.tiny else args.open_clip_python)):
        if framework == "open_clip" and python is None:
            break
        w, reply = _start(framework, model, args, python)
        if w is None and framework == "vlmkit":
            raise RuntimeError(f"vlmkit {model} worker failed: {reply}")
        if w is None:
            why = f"{python}: {reply.strip()[-300:]}"
        else:
            workers[framework], builds[framework] = w, reply
    if args.tiny:
        print(f"{model}: open_clip side skipped (--tiny: vlmkit's debug presets have no open_clip counterpart)")
    elif "open_clip" not in workers:
        print(f"open_clip NOT AVAILABLE ({why}): {model} comparison skipped. Install open_clip (it pulls "
              "torchvision) into a separate environment and pass --open-clip-python /that/env/bin/python.")
    samples: dict[str, list[float]] = {f: [] for f in workers}
    try:
        for _ in range(args.steps):
            for f, w in workers.items():  # interleaved: A, B, A, B ...
                samples[f].append(w.ask("step")["s"])
        rss = {f: w.ask("rss")["peak_rss_mb"] for f, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for f, b in builds.items():
        step_s, median_s = min(samples[f]), statistics.median(samples[f])
        floor_s = b["flops_per_step"] / matmul_rate
        rows.append({"case": f"{model}{' tiny' if args.tiny else ''}", "framework": f, "torch": b["torch"],
                     "precision": args.precision,
                     "params M": b["params"] / 1e6, "batch": args.contrastive_batch,
                     "samples/s": args.contrastive_batch / step_s, "step s": step_s,
                     "median samples/s": args.contrastive_batch / median_s,
                     "peak RSS MB": rss[f], "GFLOP/step": b["flops_per_step"] / 1e9, "floor s": floor_s,
                     "frac": floor_s / step_s, "samples_s": samples[f], "build": b})
    if len(rows) == 2:
        ours, theirs = rows
        ours["x open_clip"] = ratio(ours["samples/s"], theirs["samples/s"])
        ours["median x open_clip"] = ratio(ours["median samples/s"], theirs["median samples/s"])
        ours["rss x open_clip"] = ratio(ours["peak RSS MB"], theirs["peak RSS MB"])
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="shapes-tiny", help="PaliGemma: shapes-tiny, debug, mid-300m, or none")
    p.add_argument("--dtype", default="float32", help="PaliGemma's dtype")
    p.add_argument("--batch", type=int, default=4, help="PaliGemma's batch")
    p.add_argument("--text-len", type=int, default=32, help="PaliGemma's text tokens")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting after a warm-up (best reported)")
    p.add_argument("--siglip", action="store_true", help="SigLIP B/16 step (vs open_clip ViT-B-16-SigLIP)")
    p.add_argument("--coca", action="store_true", help="CoCa B/32 step (vs open_clip coca_ViT-B-32)")
    p.add_argument("--contrastive-batch", type=int, default=8, help="batch of the SigLIP / CoCa steps")
    p.add_argument("--tiny", action="store_true", help="SigLIP / CoCa on vlmkit's debug presets, vlmkit only")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="SigLIP / CoCa: bf16 autocast on both sides, or fp32; auto = bf16 on native-bf16 CPUs")
    p.add_argument("--open-clip-python", help="interpreter of an environment with open_clip and vlmkit")
    p.add_argument("--threads", type=int, default=0, help="torch threads everywhere (0 = torch's default)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


RATIO_LEGEND = ("x open_clip = vlmkit samples/s / open_clip samples/s at each side's best step, median x open_clip "
                "the same at their median steps (> 1 = vlmkit faster); rss x open_clip = "
                "vlmkit peak RSS / open_clip's (< 1 = vlmkit smaller); frac = FLOP floor / step time")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(paligemma_worker(**json.loads(args.worker))))
        return
    meta = run_metadata(argv)
    if args.precision == "auto":
        from vlmkit.weights.dtype import cpu_has_fast_bf16  # AVX512-BF16 / AMX; else bf16 is emulated

        args.precision = "bf16" if cpu_has_fast_bf16() else "fp32"
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # the floors' matmul rate with the workers' thread count
    contrastive_dtype = "bfloat16" if args.precision == "bf16" else "float32"
    rates = {d: measure_matmul_rate(getattr(torch, d)) for d in {"float32", args.dtype, contrastive_dtype}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dense matmul "
          + ", ".join(f"{d} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items()), flush=True)
    result = {"meta": meta, "kind": "train", "ratio_legend": RATIO_LEGEND, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "precision": args.precision,
              "matmul_GFLOPs": {d: r / 1e9 for d, r in rates.items()}, "paligemma": [], "contrastive": []}
    if args.case != "none":
        result["paligemma"] = run_paligemma(args, rates[args.dtype])
        print(format_table(result["paligemma"], [
            "model", "activation ckpt", "samples_per_s", "speed x no-ckpt", "peak_rss_mb", "activation_peak_mb",
            "activation mem x no-ckpt", "floor_s", "frac"]), flush=True)
    for model in ("siglip", "coca"):
        if getattr(args, model):
            result["contrastive"] += run_contrastive(model, args, rates[contrastive_dtype])
    if result["contrastive"]:
        print(f"\n{RATIO_LEGEND}")
        print(format_table(result["contrastive"], [
            "case", "framework", "precision", "params M", "batch", "samples/s", "x open_clip", "median x open_clip",
            "peak RSS MB",
            "rss x open_clip", "GFLOP/step", "floor s", "frac"]))
    if args.json:
        meta["loadavg_end"] = list(os.getloadavg())
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
