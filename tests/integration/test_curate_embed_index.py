"""`embed_dedup` with an IVF or HNSW index inside `vlmkit data curate`: the run resumes exactly after
an interruption (the index trained mid-run, saved and reloaded), and `curate-merge` drops the
rows of one `--shard` job that duplicate rows of another, as the unsharded run does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import curate
from vlmkit.curation.merge import curate_merge
from vlmkit.curation.shard import curate_shard
from vlmkit.data.synth import SynthConfig, write_dataset

pytest.importorskip("faiss")

# 12 kept rows at most (one per scene): IVF trains on the first 8 kept, mid-run.
INDEXES = {"ivf": {"index": "ivf", "nlist": 2, "nprobe": 1, "train_rows": 8},
           "hnsw": {"index": "hnsw", "hnsw_m": 4, "ef_search": 8}}  # fmt: skip


class Interrupt(Exception):
    pass


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, str]:
    """A manifest of 12 synthetic scenes, 4 consecutive rows per scene sharing one image (so the
    3 later rows are duplicates, and `--shard i/2` puts copies in both jobs), and a debug SigLIP."""
    from vlmkit.weights.create import create_checkpoint

    root = tmp_path_factory.mktemp("embed-index")
    manifest = write_dataset(root / "data", 12, SynthConfig(image_size=32))
    model = str(create_checkpoint(root / "siglip", "debug", family="siglip"))
    return manifest, model


def config(model: str, kind: str):
    rule = {"model": model, "threshold": 0.999} | INDEXES[kind]
    return parse_config({"run": {"batch_size": 4, "checkpoint_rows": 8}, "rules": {"embed_dedup": rule}})


@pytest.mark.parametrize("kind", list(INDEXES))
def test_an_interrupted_run_resumes_to_the_uninterrupted_output(world, tmp_path, kind):
    manifest, model = world
    cfg = config(model, kind)
    report = curate(manifest, tmp_path / "full", cfg)
    assert report["rows_in"] == 48 and report["rows_out"] == 12 and report["removed_by"]["embed_dedup"] == 36

    def stop(position: int) -> None:
        if position >= 40:  # the index has 10 rows (IVF trained at 8), checkpoint at 40
            raise Interrupt

    with pytest.raises(Interrupt):
        curate(manifest, tmp_path / "cut", cfg, on_batch=stop)
    state = json.loads((tmp_path / "cut" / ".curate" / "state.json").read_text())
    ckpt = tmp_path / "cut" / ".curate" / f"ckpt-{state['ckpt']}"
    meta = json.loads((ckpt / "embed_dedup" / "index.json").read_text())
    assert state["position"] == 40 and meta["trained"]
    curate(manifest, tmp_path / "cut", cfg)
    assert files(tmp_path / "cut") == files(tmp_path / "full")


@pytest.mark.parametrize("kind", list(INDEXES))
def test_merge_drops_the_duplicates_split_across_jobs(world, tmp_path, kind):
    manifest, model = world
    cfg = config(model, kind)
    jobs = [tmp_path / f"job{i}" for i in range(2)]
    for i, out in enumerate(jobs):
        report = curate_shard(manifest, out, cfg, (i, 2))
        assert report["rows_out"] == 12  # each job holds 2 rows of each scene, keeps one
    merged = curate_merge(jobs, tmp_path / "merged")
    assert merged["rows_out"] == 12 and merged["removed_by"]["embed_dedup"] == 36
    curate(manifest, tmp_path / "whole", cfg)
    assert (tmp_path / "merged" / "manifest.jsonl").read_bytes() == (tmp_path / "whole" / "manifest.jsonl").read_bytes()
