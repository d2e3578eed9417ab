"""benchmarks/bench_dedup.py at a tiny size: every variant runs in its own process, finds every
planted near-duplicate at this size, agrees with the exact flat search, and the JSON renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")

ROOT = Path(__file__).resolve().parents[2]


def test_bench_dedup_smoke(tmp_path):
    out = tmp_path / "dedup.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_dedup.py"), "--rows", "3000", "--dim", "64",
           "--batch-size", "256", "--nlist", "16", "--nprobe", "4", "--train-rows", "1024", "--threads", "1",
           "--variants", "flat:float32:2000,flat:sq8,ivf:float32,ivf:sq8,hnsw:float32:2500", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["kind"] == "dedup" and "bench_dedup.py" in data["meta"]["command"]
    assert data["meta"]["loadavg_end"]
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["flat float32", "flat sq8", "ivf float32", "ivf sq8", "hnsw float32"]
    assert [r["rows"] for r in rows.values()] == [2000, 3000, 3000, 3000, 2500]
    for r in rows.values():
        assert r["rows/s"] > 0 and r["peak RSS MB"] > 0 and r["index MB"] > 0
        assert r["recall"] == 1.0 and r["false-positive rate"] == 0.0 and r["same as exact"] == 1.0
    assert rows["ivf sq8"]["index bytes/row"] < rows["ivf float32"]["index bytes/row"] / 3  # 1 byte per dim, not 4
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_table.py"), str(out)],
                           capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert table.returncode == 0 and "| ivf sq8 | IVF16,SQ8 | 3000 |" in table.stdout
