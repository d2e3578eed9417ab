"""`vlmkit data curate --engine ray` on a local Ray instance (2 CPUs, started and shut down here):
the same input and config give the default engine's output byte for byte (the kept rows in input
order, the shards) and the same report counts, with filters, dedup (hashes and a FAISS index),
a fitted top-fraction score filter, k-means caps and concept balancing in the chain; a run killed
mid-block resumes to an uninterrupted run's files byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import curate
from vlmkit.data.synth import SynthConfig, write_dataset

ray = pytest.importorskip("ray", reason="--engine ray needs ray (pip install 'vlmkit[curate]')")
pytest.importorskip("faiss")
pytestmark = pytest.mark.slow  # starting Ray and its actors takes ~30 s on 2 shared cores

COUNTS = ("rows_in", "rows_out", "unreadable", "removed_by")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def siglip(tmp_path_factory) -> str:
    from vlmkit.weights.create import create_checkpoint

    return str(create_checkpoint(tmp_path_factory.mktemp("m") / "siglip", "debug", family="siglip"))


def tables(siglip: str) -> dict:
    return {"text_length": {"min_words": 3}, "image_decode": {}, "image_uniform": {},
            "clip_score": {"model": siglip, "top_fraction": 0.9, "fit_rows": 24},
            "exact_dedup": {"on": "image"}, "embed_dedup": {"model": siglip, "threshold": 0.9999},
            "kmeans_balance": {"model": siglip, "k": 3, "cap": 6, "fit_rows": 24},
            "concept_balance": {"concepts": ["red", "blue", "green", "circle"], "cap": 4, "keep_unmatched": True}}  # fmt: skip


def compare(a: Path, b: Path, under: str) -> None:
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    assert {k: ra[k] for k in COUNTS} == {k: rb[k] for k in COUNTS}
    for name, rule in ra["rules"].items():
        other = rb["rules"][name]
        assert {k: rule[k] for k in ("seen", "kept", "removed", "categories")} == \
            {k: other[k] for k in ("seen", "kept", "removed", "categories")}, name  # fmt: skip
    assert output(a, under) == output(b, under) != {}


def output(folder: Path, under: str) -> dict[str, bytes]:
    """The kept rows' files (a manifest, or the shards) by relative path."""
    root = folder / under
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}


def published(folder: Path) -> dict[str, bytes]:
    """Every file of a finished run but its resume state: rows, report.json / .html, histograms."""
    files = output(folder, ".")
    assert "report.json" in files and "manifest.jsonl" in files
    return {k: v for k, v in files.items() if not k.startswith(".curate/")}


def test_ray_equals_the_default_engine_on_a_manifest(local_ray, siglip, tmp_path):
    from vlmkit.curation.ray_engine import curate_ray

    path = write_dataset(tmp_path / "d", 12, SynthConfig(image_size=32))
    lines = path.read_text().splitlines()
    (tmp_path / "d" / "images" / "bad.png").write_bytes(b"not a png")
    bad = json.dumps({"image": "images/bad.png", "prefix": "caption en", "suffix": "a broken red picture"})
    path.write_text("\n".join([*lines[:5], "{not json", bad, *lines[5:]]) + "\n")
    config = parse_config({"run": {"batch_size": 8}, "rules": tables(siglip)})
    default = curate(path, tmp_path / "default", config)
    report = curate_ray(path, tmp_path / "ray", config)
    assert 0 < report["rows_out"] < report["rows_in"] == len(lines) + 2
    assert report["removed_by"]["exact_dedup"] > 0 and report["removed_by"]["concept_balance"] > 0
    assert report["unreadable"] == default["unreadable"] == {"bad_json": 1}
    compare(tmp_path / "default", tmp_path / "ray", "manifest.jsonl")
    assert ray.is_initialized()  # the caller's instance is left running


def test_ray_equals_the_default_engine_on_tar_shards(local_ray, siglip, tmp_path):
    from vlmkit.curation.ray_engine import curate_ray

    src = write_dataset(tmp_path / "src", 10, SynthConfig(image_size=32), shards=True, shard_size=7)
    shutil.copy(src / "shard-000000.tar", src / "shard-000009.tar")  # a whole file of exact copies
    config = parse_config({"run": {"batch_size": 4, "shard_size": 5}, "rules": tables(siglip)})
    curate(src, tmp_path / "default", config)
    report = curate_ray(src, tmp_path / "ray", config)
    assert report["rows_in"] == 47 and report["removed_by"]["exact_dedup"] >= 7
    compare(tmp_path / "default", tmp_path / "ray", "shards")


_KILLED = """
import json, sys, time
import ray
import vlmkit.curation.io as io
from vlmkit.curation.config import parse_config
from vlmkit.curation.ray_engine import RayCurateRun, curate_ray

src, out, marker, tables = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
commits, checkpoint, write = [], RayCurateRun._checkpoint, io.RowWriter.write

def commit(self, position):
    checkpoint(self, position)
    commits.append(position)

def write_then_hang(self, row):  # after the fit's commit and two blocks: hang inside the third
    write(self, row)
    if len(commits) == 3:
        self.file.flush()
        open(marker, "w").close()
        time.sleep(3600)

RayCurateRun._checkpoint, io.RowWriter.write = commit, write_then_hang
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
curate_ray(src, out, parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": tables}))
"""


def _run_until_marker(args: list[str], marker: Path) -> None:
    """Start the script, wait until it wrote `marker`, then SIGKILL it and everything it started."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes of its session
        proc.wait()
        proc.stderr.close()


def test_a_killed_ray_run_resumes_exactly(local_ray, siglip, tmp_path):
    """SIGKILL while the third block is half written; the rerun cuts the partial block, reloads
    the fitted and dedup / cap state and gives an uninterrupted run's files byte for byte."""
    from vlmkit.curation.ray_engine import curate_ray

    path = write_dataset(tmp_path / "d", 12, SynthConfig(image_size=32))
    cut, marker = tmp_path / "cut", tmp_path / "hung"
    _run_until_marker([str(path), str(cut), str(marker), json.dumps(tables(siglip))], marker)
    state = json.loads((cut / ".curate" / "state.json").read_text())
    assert state["position"] == 16 and not state["done"] and not (cut / "report.json").exists()
    assert (cut / "manifest.jsonl").stat().st_size > state["writer"]["offset"]  # a partly written block
    config = parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": tables(siglip)})
    resumed = curate_ray(path, cut, config)
    curate_ray(path, tmp_path / "full", config)
    assert resumed["rows_in"] == 48 and 0 < resumed["rows_out"] < 48
    assert resumed["removed_by"]["exact_dedup"] > 0
    assert published(cut) == published(tmp_path / "full")
    curate(path, tmp_path / "default", config)
    compare(tmp_path / "default", cut, "manifest.jsonl")


def test_a_folder_of_another_run_is_refused(local_ray, tmp_path):
    from vlmkit.curation.ray_engine import curate_ray
    from vlmkit.errors import OutputError

    path = write_dataset(tmp_path / "d", 4, SynthConfig(image_size=32))
    curate(path, tmp_path / "o", parse_config({"rules": {"text_length": {}}}))
    with pytest.raises(OutputError, match="holds a curate run of another input or config"):
        curate_ray(path, tmp_path / "o", parse_config({"rules": {"text_length": {}}}))  # the default engine's
    curate_ray(path, tmp_path / "r", parse_config({"rules": {"text_length": {}}}))
    with pytest.raises(OutputError, match="holds a curate run of another input or config"):
        curate_ray(path, tmp_path / "r", parse_config({"rules": {"image_size": {}}}))


def test_ray_runs_the_itm_score_rule_unchanged(local_ray, tmp_path):
    from vlmkit.curation.ray_engine import curate_ray
    from vlmkit.training.itm_head import write_itm_head
    from vlmkit.weights.create import create_checkpoint
    from vlmkit.weights.hf import load_hf

    folder = create_checkpoint(tmp_path / "m", "debug", family="siglip")
    head_cfg = load_hf(folder).itm_head_config
    write_itm_head(head_cfg.build(), head_cfg, folder)  # an untrained head: only equality matters here
    path = write_dataset(tmp_path / "d", 12, SynthConfig(image_size=32))
    rules = {"clip_score": {"model": str(folder), "threshold": -1.0},
             "itm_score": {"model": str(folder), "top_fraction": 0.5, "fit_rows": 24}}
    config = parse_config({"run": {"batch_size": 8}, "rules": rules})
    default = curate(path, tmp_path / "default", config)
    curate_ray(path, tmp_path / "ray", config)
    assert default["removed_by"]["itm_score"] > 0
    compare(tmp_path / "default", tmp_path / "ray", "manifest.jsonl")
