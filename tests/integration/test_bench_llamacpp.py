"""benchmarks/bench_llamacpp.py: argument parsing, the vlmkit side end to end on the debug Gemma
decoder, and (only where a llama-cpp-python build exists) the llama.cpp side on the same model.

No timing is checked: speeds on a shared machine at this size mean nothing. Building llama.cpp
takes tens of minutes, so the tests never build it: the llama.cpp test looks for the virtual
environment the script builds (in $VLMKIT_LLAMACPP_WORKDIR, default /tmp/llamacpp) and is
skipped, with the reason, when llama_cpp does not import there.
"""

import argparse
import os
import sys
from pathlib import Path

import pytest

from tests.integration.test_benchmarks import ROOT, _positive, _run

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_llamacpp  # noqa: E402

SMALL = ("--preset", "debug", "--prompt-tokens", "5", "--new-tokens", "4", "--reps", "1")


def test_parse_pairs():
    assert bench_llamacpp.parse_pairs("q8_0:int8,bf16:bf16") == [("q8_0", "int8"), ("bf16", "bf16")]
    args = bench_llamacpp.build_parser().parse_args([])
    assert args.pairs == [("q8_0", "int8"), ("q8_0+noextra", "int8"), ("bf16", "bf16")]
    assert args.threads == 2 and args.compile
    for bad in ("q4_0:int8", "q8_0:int4", "q8_0"):
        with pytest.raises(argparse.ArgumentTypeError, match="bad pair"):
            bench_llamacpp.parse_pairs(bad)


def test_prompt_ids_same_for_both_sides():
    ids = bench_llamacpp.prompt_ids(32, 257216)
    assert ids == bench_llamacpp.prompt_ids(32, 257216) and len(ids) == 32 and ids[0] == 2
    assert all(256 <= i < 257216 for i in ids[1:])


@pytest.mark.slow  # ~25 s: a debug gemma decoded with and without profiling
def test_vlmkit_side_smoke(tmp_path):
    out, stdout = _run("bench_llamacpp.py", *SMALL, "--skip-llamacpp", "--no-compile", "--profile", "2",
                       "--workdir", str(tmp_path / "work"), json_path=tmp_path / "out.json")
    assert "llama.cpp side skipped" in stdout and "bench_llamacpp.py" in out["meta"]["command"]
    assert len(out["meta"]["loadavg_end"]) == 3 and out["build"] is None
    assert [r["variant"] for r in out["rows"]] == ["Q8_0 vs vlmkit int8", "Q8_0+NOEXTRA vs vlmkit int8",
                                                   "BF16 vs vlmkit bf16"]
    for row, res in zip(out["rows"], out["pairs"].values()):
        assert set(res) == {"vlmkit"} and "x llama.cpp" not in row
        assert _positive(row["vlmkit tok/s"]) and _positive(row["vlmkit RSS MB"]) and row["compiled"] is False
        assert len(res["vlmkit"]["tokens"]) == 4 and len(res["vlmkit"]["samples"]) == 1
        ops = [o["op"] for o in res["vlmkit"]["profile"]["ops"]]
        assert ops and all(_positive(o["self_ms_per_step"]) for o in res["vlmkit"]["profile"]["ops"])
    # The int8 variant runs the fused int8 kernel (or its cast fallback); the bf16 one does not.
    int8_ops, _, bf16_ops = ({o["op"] for o in r["vlmkit"]["profile"]["ops"]} for r in out["pairs"].values())
    assert int8_ops != bf16_ops


def _llamacpp_workdir() -> Path:
    return Path(os.environ.get("VLMKIT_LLAMACPP_WORKDIR", "/tmp/llamacpp"))


@pytest.mark.slow
def test_llamacpp_side(tmp_path):
    workdir = _llamacpp_workdir()
    if not bench_llamacpp.llama_cpp_importable(bench_llamacpp.venv_python(workdir)):
        pytest.skip(f"llama_cpp does not import in {workdir}/venv: build it with benchmarks/bench_llamacpp.py "
                    "(or set VLMKIT_LLAMACPP_WORKDIR)")
    out, stdout = _run("bench_llamacpp.py", *SMALL, "--no-compile", "--workdir", str(workdir),
                       json_path=tmp_path / "out.json")
    assert "llama.cpp tok/s" in stdout
    for row, res in zip(out["rows"], out["pairs"].values()):
        assert set(res) == {"vlmkit", "llama.cpp"}
        assert all(_positive(row[k]) for k in ("llama.cpp tok/s", "vlmkit tok/s", "x llama.cpp", "llama.cpp RSS MB"))
        assert len(res["llama.cpp"]["tokens"]) == 4
    assert "CPU" in out["pairs"]["Q8_0 vs vlmkit int8"]["llama.cpp"]["load"]["system_info"]
