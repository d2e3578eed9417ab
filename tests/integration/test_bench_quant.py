"""benchmarks/bench_quant.py end to end on the debug shape (a smoke run: structure, not speed)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow  # ~27 s: every variant compiled
def test_bench_quant_smoke(tmp_path):
    """Float vs int8 vs int4 decode in one run: one row per variant, ratios against the float row,
    the quantised rows' logit error reported."""
    out_json = tmp_path / "quant.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_quant.py"), "--cases", "debug:float32",
           "--decode-schemes", "int8,int4-g32", "--no-compile", "--no-error-report", "--new-tokens", "2",
           "--reps", "1", "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())["rows"]}
    assert set(rows) == {"vlmkit", "vlmkit+int8", "vlmkit+int4-g32"}
    assert rows["vlmkit"]["vs float b8"] == 1.0 and "vs float b8" in proc.stdout
    for v in ("vlmkit+int8", "vlmkit+int4-g32"):
        assert _positive(rows[v]["vs float b1"]) and _positive(rows[v]["vs float b8"])
        assert 0 < rows[v]["logit err"] < 0.2


def test_error_report_structure():
    """The report's numbers on a small held-out slice: int8 close to float, int4 further."""
    from vlmkit.generation.quant_report import report

    rep = report(schemes=("int8", "int4-g32"), positions=64, n_scenes=2)
    assert rep["targets"] >= 64 and rep["positions"] == 64
    int8, int4 = rep["rows"]
    assert int8["scheme"] == "int8" and int4["scheme"] == "int4-g32"
    assert 0 < int8["max_abs_over_max_ref"] < int4["max_abs_over_max_ref"] < 0.5
    assert int8["argmax_agreement"] >= 0.95 and abs(int8["loss_change"]) < 0.01
    assert all(r["loss_float"] == rep["loss_float"] > 0 for r in rep["rows"])


def test_bench_quant_kernels_smoke(tmp_path):
    """One row per (N, M, kernel) with positive times; the W8A8 rows through oneDNN's layout and
    through vlmkit's kernel give always-dynamic W8A8's bits, so their error equals int8dyn's."""
    from vlmkit.generation.quantize_packed import packed_int8_available
    from vlmkit.kernels import load_int8_kernels

    out_json = tmp_path / "k.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_quant_kernels.py"), "--out", "64", "--in", "128",
           "--rows", "1,3,20", "--groups", "32", "--reps", "1", "--threads", "1",
           "--only", "int8pack,int8dyn,int8dyn_onednn,int8dyn_vlmkit,int8dyn_vnni,int4g32", "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out_json.read_text())
    rows = {(r["M"], r["kernel"]): r for r in data["rows"]}
    expected = {"bf16", "int8pack", "int8dyn", "int4g32"}
    expected |= {"int8dyn_onednn"} if packed_int8_available(torch.device("cpu")) else set()
    expected |= {"int8dyn_vlmkit", "int8dyn_vnni"} if load_int8_kernels() else set()
    assert {k for m, k in rows if m == 3} == expected and data["kind"] == "quant-kernels"
    for m in (1, 3, 20):
        assert all(_positive(rows[m, k]["ms"]) and _positive(rows[m, k]["x bf16"]) for k in expected)
        for k in expected & {"int8dyn_onednn", "int8dyn_vlmkit", "int8dyn_vnni"}:
            assert rows[m, k]["rel err"] == rows[m, "int8dyn"]["rel err"], (m, k)
