"""The benchmark scripts run end to end in their smallest modes (debug models, one step or one
repetition, one thread) and write the JSON they document, with positive throughputs.

Speed and ratios are not checked: on a shared CI machine they mean nothing at this size. The
open_clip side of bench_train.py needs another environment and is skipped here (the script says so).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, json_path: Path) -> tuple[dict, str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--threads", "1", "--json", str(json_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(json_path.read_text()), proc.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_train_smoke(tmp_path):
    out, stdout = _run("bench_train.py", "--case", "debug", "--batch", "2", "--steps", "1", "--siglip", "--coca",
                       "--tiny", "--contrastive-batch", "2", json_path=tmp_path / "train.json")
    assert _positive(out["matmul_GFLOPs"]["float32"])
    assert [r["activation ckpt"] for r in out["paligemma"]] == [False, True]
    for r in out["paligemma"]:
        assert all(_positive(r[k]) for k in ("samples_per_s", "peak_rss_mb", "flops_per_step", "floor_s", "frac"))
    # Checkpointing recomputes the forward pass: more FLOPs for the same step.
    assert out["paligemma"][1]["flops_per_step"] > out["paligemma"][0]["flops_per_step"]
    assert [(r["case"], r["framework"]) for r in out["contrastive"]] == [("siglip tiny", "vlmkit"),
                                                                         ("coca tiny", "vlmkit")]
    for r in out["contrastive"]:
        assert all(_positive(r[k]) for k in ("samples/s", "peak RSS MB", "GFLOP/step", "floor s", "frac", "params M"))
        assert math.isfinite(r["build"]["warmup_loss"])
        assert "x open_clip" not in r  # no open_clip here, so no ratio
    assert "open_clip side skipped" in stdout


def test_bench_generate_smoke(tmp_path):
    out, _ = _run("bench_generate.py", "--cases", "debug:float32", "--variants", "vlmkit,transformers",
                  "--new-tokens", "2", "--reps", "1", "--workdir", str(tmp_path / "work"),
                  json_path=tmp_path / "gen.json")
    assert _positive(out["hardware"]["matmul_GFLOPs"]["float32"]) and _positive(out["hardware"]["bandwidth_GBps"])
    (res,) = out["results"]
    assert set(res["variants"]) == {"vlmkit", "transformers"}
    assert out["hardware"]["device"] == "cpu"  # no CUDA here: --device auto falls back to cpu
    for m in res["variants"].values():
        keys = ("prefill_s", "ttft_s", "decode_tok_s_b1", "decode_tok_s_b8", "vision_s_per_image", "peak_rss_mb")
        assert all(_positive(m[k]) for k in keys)
        assert _positive(m["fraction_of_floor"]["vision"]) and m["cuda_peak_mb"] is None
    # Greedy decoding of the same weights: both frameworks pick the same tokens.
    assert res["variants"]["vlmkit"]["vs_transformers"]["same_tokens_b1"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_generate_cuda_smoke(tmp_path):
    out, _ = _run("bench_generate.py", "--device", "cuda", "--cases", "debug:bfloat16",
                  "--variants", "vlmkit,vlmkit+compile,transformers", "--new-tokens", "2", "--reps", "1",
                  "--workdir", str(tmp_path / "work"), json_path=tmp_path / "gen.json")
    hw = out["hardware"]
    assert hw["device"] == "cuda" and _positive(hw["bandwidth_GBps"]) and _positive(hw["matmul_GFLOPs"]["bfloat16"])
    (res,) = out["results"]
    for m in res["variants"].values():
        assert all(_positive(m[k]) for k in ("prefill_s", "decode_tok_s_b1", "vision_s_per_image", "cuda_peak_mb"))
    assert res["variants"]["vlmkit"]["vs_transformers"]["same_tokens_b1"]


def test_bench_generate_cuda_without_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--device", "cuda"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip() == "--device cuda: torch sees no CUDA device here"


def test_bench_preprocess_smoke(tmp_path):
    out, _ = _run("bench_preprocess.py", "--n", "2", "--reps", "1", "--src-size", "64x48", "--size", "32",
                  json_path=tmp_path / "pre.json")
    assert len(out["rows"]) == 4
    for r in out["rows"]:
        assert _positive(r["images/s"]) and r["max |diff|"] < 0.05
    assert out["rows"][1]["max |diff|"] == 0  # the reference path is bit-identical to transformers
