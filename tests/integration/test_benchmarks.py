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
    assert _positive(out["matmul_GFLOPs"]["float32"]) and "bench_train.py" in out["meta"]["command"]
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


def _has_torchao() -> bool:
    try:
        import torchao.quantization  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        return False
    return True


GEN_KEYS = ("prefill_s", "ttft_s", "decode_tok_s_b1", "decode_tok_s_b8", "vision_s_per_image", "peak_rss_mb")


def _check_generate(out: dict, variants: set[str]) -> dict:
    """Structure shared by every bench_generate run: metadata, positive metrics, directed ratios."""
    meta = out["meta"]
    assert meta["command"].startswith("python ") and "bench_generate.py" in meta["command"]
    assert len(meta["loadavg_start"]) == 3 and meta["torch"] == torch.__version__ and meta["transformers"]
    assert set(meta["cpu_flags"]) >= {"avx512_bf16", "amx_bf16"} and "date_utc" in meta
    assert "> 1 = this row faster" in out["ratio_legend"] and "< 1 = this row smaller" in out["ratio_legend"]
    (res,) = out["results"]
    assert set(res["variants"]) == variants
    for name, m in res["variants"].items():
        assert all(_positive(m[k]) for k in GEN_KEYS), name
        assert _positive(m["fraction_of_floor"]["vision"]) and m["cuda_peak_mb"] is None
        assert set(m["vs"]) == {v for v in variants if v.startswith("transformers") and v != name}
        for r in m["vs"].values():
            assert all(_positive(r[k]) for k in ("prefill_speedup", "decode_b1_speedup", "peak_rss_ratio"))
    return res["variants"]


def test_bench_generate_smoke(tmp_path):
    int8 = _has_torchao()
    variants = {"vlmkit", "transformers"} | ({"vlmkit+int8", "transformers+int8"} if int8 else set())
    out, stdout = _run("bench_generate.py", "--cases", "debug:float32", "--variants", ",".join(sorted(variants)),
                       "--new-tokens", "2", "--reps", "1", "--workdir", str(tmp_path / "work"),
                       json_path=tmp_path / "gen.json")
    assert _positive(out["hardware"]["matmul_GFLOPs"]["float32"]) and _positive(out["hardware"]["bandwidth_GBps"])
    assert out["hardware"]["device"] == "cpu"  # no CUDA here: --device auto falls back to cpu
    got = _check_generate(out, variants)
    assert out["ratio_legend"] in stdout  # printed above the table
    assert got["vlmkit"]["reference"] == "transformers" and got["transformers"]["reference"] is None
    # Greedy decoding of the same weights: every float variant picks the same tokens.
    same = got["vlmkit"]["vs"]["transformers"]
    assert same["same_tokens_b1"] and same["same_tokens_b8"]
    if int8:  # each int8 row is compared with the other framework's int8, and both report their error
        assert got["vlmkit+int8"]["reference"] == "transformers+int8"
        assert all(got[v]["logit_error"]["max_abs_over_max_ref"] < 0.05 for v in ("vlmkit+int8", "transformers+int8"))


def test_bench_generate_quantised_variants_load_quantised(tmp_path):
    """Quantised vlmkit variants load as `--quantize` does and take their logit error from a float
    child process; "+packed" on int8-dyn packs the W8A8 layers (reported on stderr)."""
    variants = {"vlmkit", "vlmkit+int8-dyn", "vlmkit+int8-dyn+packed"}
    out, _ = _run("bench_generate.py", "--cases", "debug:bfloat16", "--variants", ",".join(sorted(variants)),
                  "--new-tokens", "2", "--reps", "1", "--workdir", str(tmp_path / "work"),
                  json_path=tmp_path / "gen.json")
    got = out["results"][0]["variants"]
    assert set(got) == variants and got["vlmkit"]["logit_error"] is None
    for v in ("vlmkit+int8-dyn", "vlmkit+int8-dyn+packed"):
        err = got[v]["logit_error"]
        assert 0 < err["max_abs_over_max_ref"] < 0.05 and err["argmax_agreement"] > 0.9, (v, err)


def test_bench_generate_llava_smoke(tmp_path):
    """--family llava at the debug shape: the same structure as PaliGemma's run, the family in
    every result and table row, and vlmkit's greedy tokens identical to transformers' (loaded by
    AutoModelForImageTextToText from the same folder, fed the same batch)."""
    int8 = _has_torchao()
    variants = {"vlmkit", "transformers"} | ({"vlmkit+int8", "transformers+int8"} if int8 else set())
    out, stdout = _run("bench_generate.py", "--family", "llava", "--preset", "debug",
                       "--variants", ",".join(sorted(variants)), "--new-tokens", "3", "--reps", "1",
                       "--workdir", str(tmp_path / "work"), json_path=tmp_path / "gen.json")
    got = _check_generate(out, variants)
    (res,) = out["results"]
    assert (res["family"], res["case"], res["dtype"]) == ("llava", "debug", "float32")
    assert "--family llava" in out["meta"]["command"] and "llava debug float32" in stdout
    assert json.loads((tmp_path / "work" / "llava-debug-float32" / "config.json").read_text())["model_type"] == "llava"
    same = got["vlmkit"]["vs"]["transformers"]
    assert same["same_tokens_b1"] and same["same_tokens_b8"]
    assert len(got["vlmkit"]["tokens"]["b8"]) == 8 and all(len(t) == 3 for t in got["vlmkit"]["tokens"]["b8"])
    if int8:
        assert got["vlmkit+int8"]["reference"] == "transformers+int8"
        assert all(got[v]["logit_error"]["max_abs_over_max_ref"] < 0.05 for v in ("vlmkit+int8", "transformers+int8"))


@pytest.mark.parametrize("args, message", [
    (("--family", "nope"), "--family: unknown model family 'nope'"),
    (("--family", "siglip"), "--family: siglip is not a vlm family"),
    (("--family", "llava", "--preset", "huge"), "unknown llava case 'huge'; choose from clip-b16-llama-300m"),
    (("--cases", "debug"), "--cases: 'debug' is not CASE:DTYPE"),
])
def test_bench_generate_bad_family_or_case_is_one_line(tmp_path, args, message):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), *args, "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip().startswith(message), proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())  # stopped before writing a checkpoint


@pytest.mark.slow
def test_bench_generate_compiled_baselines(tmp_path):
    """vlmkit's compiled decode against transformers' documented fast path (static cache +
    torch.compile of the forward), and transformers' static cache alone: same greedy tokens
    everywhere; compiles both frameworks (~40 s on 2 cores)."""
    variants = {"vlmkit+compile", "transformers", "transformers+static", "transformers+static+compile"}
    out, _ = _run("bench_generate.py", "--cases", "debug:float32", "--variants", ",".join(sorted(variants)),
                  "--new-tokens", "3", "--reps", "1", "--workdir", str(tmp_path / "work"),
                  json_path=tmp_path / "gen.json")
    got = _check_generate(out, variants)
    assert got["vlmkit+compile"]["reference"] == "transformers+static+compile"
    assert got["vlmkit+compile"]["compiled"] is True
    for v, ref in (("vlmkit+compile", "transformers+static+compile"), ("transformers+static", "transformers"),
                   ("transformers+static+compile", "transformers")):
        same = got[v]["vs"][ref]
        assert same["same_tokens_b1"] and same["same_tokens_b8"], (v, ref)


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
    assert res["variants"]["vlmkit"]["vs"]["transformers"]["same_tokens_b1"]


def test_bench_generate_cuda_without_gpu_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--device", "cuda"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and proc.stderr.strip() == "--device cuda: torch sees no CUDA device here"


def test_bench_preprocess_smoke(tmp_path):
    out, stdout = _run("bench_preprocess.py", "--n", "2", "--reps", "1", "--src-size", "64x48", "--size", "32",
                       json_path=tmp_path / "pre.json")
    assert len(out["rows"]) == 4
    for r in out["rows"]:
        assert _positive(r["images/s"]) and r["max |diff|"] < 0.05
    assert out["rows"][1]["max |diff|"] == 0  # the reference path is bit-identical to transformers
    # The baseline is named: transformers' PIL ("slow") processor, in the table and the JSON.
    assert out["reference"]["backend"] == "PIL" and out["reference"]["class"] in out["rows"][0]["variant"]
    assert "PIL backend" in out["rows"][0]["variant"] and out["ratio_legend"] in stdout
    assert "bench_preprocess.py" in out["meta"]["command"] and len(out["meta"]["loadavg_start"]) == 3


def test_render_table_on_the_committed_results():
    """The README's tables come from benchmarks/results/*.json through render_table.py."""
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files, "no committed benchmark JSON"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render_table.py"), *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in files:
        data = json.loads(f.read_text())
        assert data["meta"]["date_utc"] in proc.stdout and data["meta"]["command"] in proc.stdout
        assert data["ratio_legend"][1:] in proc.stdout  # the direction of every ratio (first letter capitalised)
        variants = [v for res in data.get("results", []) for v in res["variants"]]
        variants = variants or [r["variant"] for r in data.get("rows", []) if "variant" in r]  # preprocessing, curation
        for v in variants:
            assert f"| {v} |" in proc.stdout, v


def test_bench_packing_smoke(tmp_path):
    """Debug widths, 1/8-size images, float32: every variant runs, and packed and padded give
    transformers' features (so the timed paths compute the same thing)."""
    out, stdout = _run("bench_packing.py", "--tiny", "--reps", "1", "--dtype", "float32",
                       json_path=tmp_path / "packing.json")
    assert [(r["encoder"].split("-")[0], r["variant"]) for r in out["rows"]] == [
        (e, v) for e in ("Pixtral", "Qwen2") for v in ("vlmkit packed", "vlmkit padded", "transformers")]
    for r in out["rows"]:
        assert _positive(r["images/s"]) and _positive(r["x padded"]) and r["max |diff|"] < 1e-4
    assert len(out["sizes"]) == 16 and out["ratio_legend"] in stdout and len(out["meta"]["loadavg_start"]) == 3


def test_bench_serve_smoke(tmp_path):
    """Two dtypes side by side: float32 and `auto` as `vlmkit serve` resolves it (dropped when it is
    float32 too: one pair of servers per resolved dtype)."""
    pytest.importorskip("fastapi")
    from vlmkit.weights.dtype import resolve_dtype

    out, stdout = _run("bench_serve.py", "--clients", "1,2", "--max-batch", "2", "--max-tokens", "3", "--reps", "1",
                       "--min-requests", "2", "--requests-per-client", "1", "--dtype", "float32,auto",
                       json_path=tmp_path / "serve.json")
    assert out["benchmark"] == "serve" and "bench_serve.py" in out["meta"]["command"]
    assert len(out["meta"]["loadavg_start"]) == 3 and len(out["meta"]["loadavg_end"]) == 3
    auto = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    labels = ["float32"] + ([] if auto == "float32" else [f"{auto} (auto)"])
    assert [(r["clients"], r["dtype"], r["variant"]) for r in out["rows"]] == [
        (c, d, v) for c in (1, 2) for d in labels for v in ("one at a time (max-batch 1)", "continuous (max-batch 2)")]
    for r in out["rows"]:
        assert all(_positive(r[k]) for k in ("requests/s", "tokens/s", "x one-at-a-time", "p50 latency s",
                                             "p95 latency s", "rows per step", "decode steps"))
        assert r["same answers"] is True and r["requests"] == 2
    assert out["ratio_legend"] in stdout and "load average at start" in stdout


@pytest.mark.parametrize("dtype, message", [("float64", "--dtype: unknown dtype 'float64'"), (",", "--dtype: no dtype")])
def test_bench_serve_bad_dtype_is_one_line(dtype, message):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--dtype", dtype],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
