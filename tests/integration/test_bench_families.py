"""bench_generate.py runs every registered vlm family at its debug shape (and LLaVA's Pixtral
preset), each layout built by `benchmarks/_family_batches.py`: vlmkit and transformers both
generate from the saved batch and give the same greedy tokens in float32, and the JSON has its
fields. One process pair per family loads both frameworks (~20-40 s on a shared CPU): all but one
family are marked slow.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _families import build_batch, case_config  # noqa: E402

from vlmkit.models.registry import families  # noqa: E402

CASES = [(f.name, "debug") for f in families() if f.kind == "vlm"] + [("llava", "pixtral-debug")]
FAST = {("qwen2_vl", "debug")}  # the one unmarked: flattened patches, grids and M-RoPE token types
METRICS = ("prefill_s", "ttft_s", "decode_tok_s_b1", "decode_tok_s_b8", "vision_s_per_image", "peak_rss_mb", "load_s")


def _bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), *args, "--workdir", str(tmp_path)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("family,case", [pytest.param(*c, marks=() if c in FAST else pytest.mark.slow) for c in CASES])
def test_every_family_generates_the_same_tokens(tmp_path, family, case):
    out_json = tmp_path / "out.json"
    proc = _bench(tmp_path, "--family", family, "--cases", f"{case}:float32", "--variants", "vlmkit,transformers",
                  "--reps", "1", "--new-tokens", "3", "--threads", "1", "--device", "cpu", "--json", str(out_json))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = json.loads(out_json.read_text())["results"]
    assert (res["family"], res["case"], res["dtype"]) == (family, case, "float32")
    ours, theirs = res["variants"]["vlmkit"], res["variants"]["transformers"]
    for m in (ours, theirs):
        assert all(math.isfinite(m[k]) and m[k] > 0 for k in METRICS)
        assert [len(r) for r in m["tokens"]["b8"]] == [3] * 8
    vs = ours["vs"]["transformers"]
    assert vs["same_tokens_b1"] and vs["same_tokens_b8"]
    assert all(res["floors"]["b1"][k] > 0 for k in ("prefill_s", "decode_step_s", "vision_s_per_image"))
    assert f"{family} {case} float32" in proc.stdout


@pytest.mark.parametrize("family,case", CASES)
def test_batch_fills_every_placeholder(family, case):
    """The batch's image tokens are exactly what the model's images give (vlmkit's own forward
    refuses a mismatch), its text avoids the placeholder id, and the vision tower length is set."""
    import torch

    from vlmkit.models.common.init import init_weights
    from vlmkit.models.registry import get_family

    cfg = case_config(family, case)
    batch, images = build_batch(family, cfg, 2, 5, "float32", seed=0)
    ids = batch["input_ids"]
    assert ids.shape == (2, len(images.tokens) + 5) and images.positions > 0
    assert not (ids[:, len(images.tokens):] == cfg.image_token_id).any()
    assert int(ids.max()) < cfg.text.vocab_size
    model = init_weights(get_family(family).model_class(cfg), std=0.02, seed=0).eval()
    with torch.no_grad():
        x = get_family(family).generation.prepare(model, batch)
    assert x.embeds.shape[:2] == ids.shape


def test_all_families_and_unknown_family_prefix_are_one_line(tmp_path):
    proc = _bench(tmp_path, "--family", "paligemma", "--cases", "llava/debug:float32")
    assert proc.returncode != 0 and proc.stderr.strip() == "--cases: llava not among --family paligemma"
    proc = _bench(tmp_path, "--family", "all", "--cases", "debug:float32,llava/nope:float32")
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown llava case 'nope'" in proc.stderr
