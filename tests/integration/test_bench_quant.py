"""benchmarks/bench_quant.py end to end on the debug shape (a smoke run: structure, not speed)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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
