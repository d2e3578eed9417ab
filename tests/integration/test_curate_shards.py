"""`vlmkit data curate --shard I/N` + `vlmkit data curate-merge`: a duplicate pair split across two
jobs is found by the merge only, and sharded + merged output equals the unsharded run's (byte for
byte: the same kept rows in the same order, the same report counts); bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlmkit.cli import main
from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import curate
from vlmkit.curation.merge import curate_merge
from vlmkit.curation.shard import curate_shard
from vlmkit.data.synth import SynthConfig, write_dataset

pytest.importorskip("faiss")

TABLES = {"text_length": {}, "image_uniform": {}, "exact_dedup": {"on": "image"}, "phash_dedup": {}}
COUNTS = ("rows_in", "rows_out", "unreadable", "removed_by", "rules")  # report.json fields compared


def files(folder: Path, under: str = "") -> dict[str, bytes]:
    root = folder / under
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def counts(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    rules = {k: {f: v for f, v in r.items() if f not in ("examples",)} for k, r in report["rules"].items()}
    return {k: report[k] for k in COUNTS} | {"rules": rules}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """The first row of each of 16 synthetic scenes, a bad line, then a byte copy of scene 0's
    image under another name and caption, at an odd index: job 1 of 2 gets it, job 0 the original."""
    root = tmp_path_factory.mktemp("shard-data")
    path = write_dataset(root, 16, SynthConfig(image_size=32))
    first = {}  # the first row of each scene's image
    for r in map(json.loads, path.read_text().splitlines()):
        first.setdefault(r["image"], r)
    rows = list(first.values())
    assert len(rows) == 16
    shutil.copy(root / rows[0]["image"], root / "images" / "copy.png")
    planted = {"image": "images/copy.png", "prefix": "caption en", "suffix": "the same picture again"}
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps(planted)]  # the copy has index 17
    path.write_text("\n".join(lines) + "\n")
    return path


def _jobs(source: Path, tmp: Path, config, n: int) -> list[Path]:
    outs = [tmp / f"job{i}" for i in range(n)]
    for i, out in enumerate(outs):
        curate_shard(source, out, config, (i, n))
    return outs


def test_a_duplicate_split_across_jobs_is_found_by_the_merge_only(manifest, tmp_path):
    config = parse_config({"run": {"batch_size": 4}, "rules": TABLES})
    jobs = _jobs(manifest, tmp_path, config, 2)
    for job in jobs:
        assert counts(job)["removed_by"]["exact_dedup"] == 0  # each job holds one of the pair
    kept = [json.loads(line)["image"] for job in jobs for line in (job / "manifest.jsonl").read_text().splitlines()]
    assert sum(Path(k).name == "copy.png" for k in kept) == 1 and len(kept) == 17
    merged = curate_merge(jobs, tmp_path / "merged")
    assert merged["removed_by"]["exact_dedup"] == 1 and merged["rows_out"] == 16
    curate(manifest, tmp_path / "whole", config)
    assert files(tmp_path / "merged", "manifest.jsonl") == files(tmp_path / "whole", "manifest.jsonl")
    assert counts(tmp_path / "merged") == counts(tmp_path / "whole")
    assert merged["unreadable"] == {"bad_json": 1}


def test_sharded_tar_input_merges_to_the_unsharded_output(tmp_path):
    """7 tar files of 6 samples; 4 rows per scene share image bytes, so duplicates cross files and
    jobs. 3 jobs take files 0,3,6 / 1,4 / 2,5; the merged shards equal the unsharded run's."""
    src = write_dataset(tmp_path / "src", 10, SynthConfig(image_size=32), shards=True, shard_size=6)
    assert len(list(src.glob("*.tar"))) == 7
    config = parse_config({"run": {"batch_size": 4, "shard_size": 5}, "rules": TABLES})
    jobs = _jobs(src, tmp_path, config, 3)
    assert sum(counts(j)["rows_out"] for j in jobs) > 10  # alone, the jobs keep cross-job copies
    merged = curate_merge(jobs, tmp_path / "merged")
    curate(src, tmp_path / "whole", config)
    assert merged["rows_out"] == 10
    assert files(tmp_path / "merged", "shards") == files(tmp_path / "whole", "shards")
    assert counts(tmp_path / "merged") == counts(tmp_path / "whole")


def test_a_finished_job_reruns_as_a_no_op(manifest, tmp_path):
    config = parse_config({"run": {"batch_size": 4}, "rules": TABLES})
    first = curate_shard(manifest, tmp_path / "job", config, (0, 2))
    before = files(tmp_path / "job")
    assert curate_shard(manifest, tmp_path / "job", config, (0, 2)) == first
    assert files(tmp_path / "job") == before


def test_an_interrupted_job_starts_over(manifest, tmp_path, monkeypatch):
    import vlmkit.curation.shard as shard

    config = parse_config({"run": {"batch_size": 2}, "rules": TABLES})
    calls, real = [], shard.score_rows

    def fail_on_the_third_batch(rows, rules):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rows, rules)

    monkeypatch.setattr(shard, "score_rows", fail_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        curate_shard(manifest, tmp_path / "cut", config, (1, 2))
    assert not (tmp_path / "cut" / "report.json").exists()
    monkeypatch.setattr(shard, "score_rows", real)
    curate_shard(manifest, tmp_path / "cut", config, (1, 2))
    curate_shard(manifest, tmp_path / "full", config, (1, 2))
    assert files(tmp_path / "cut") == files(tmp_path / "full")


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlmkit: error:"), err
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("spec, needle", [("3/2", "0 <= I < N"), ("x", "not I/N"), ("1/0", "0 <= I < N"),
                                          ("-1/2", "not I/N")])  # fmt: skip
def test_bad_shard_spec_is_one_line(manifest, tmp_path, capsys, spec, needle):
    assert main(["data", "curate", str(manifest), str(tmp_path / "o"), f"--shard={spec}"]) == 2
    _one_error_line(capsys, needle)
    assert not (tmp_path / "o").exists()


def test_merging_jobs_of_different_configs_is_one_line(manifest, tmp_path, capsys):
    a = tmp_path / "a"
    b = tmp_path / "b"
    curate_shard(manifest, a, parse_config({"run": {"batch_size": 4}, "rules": TABLES}), (0, 2))
    curate_shard(manifest, b, parse_config({"run": {"batch_size": 8}, "rules": TABLES}), (1, 2))
    assert main(["data", "curate-merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 2
    _one_error_line(capsys, "different config")
    assert main(["data", "curate-merge", str(a), "--out", str(tmp_path / "m")]) == 2
    _one_error_line(capsys, "missing shard(s) 1")
    assert main(["data", "curate-merge", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    _one_error_line(capsys, "no finished")


def test_rules_fitted_on_the_whole_input_are_refused_with_shard(manifest, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('[rules.concept_balance]\nconcepts = ["red"]\n')
    assert main(["data", "curate", str(manifest), str(tmp_path / "o"), "--config", str(toml), "--shard", "0/2"]) == 2
    _one_error_line(capsys, "concept_balance", "fitted on the whole input")
