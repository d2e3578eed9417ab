"""`vlmkit data curate-merge OUT1 OUT2 ... --out MERGED`: global deduplication over `--shard` jobs.

Every job saved the stage-1 records of its rows (`vlmkit.curation.shard`): hashes and embeddings
for the dedup rules, verdicts of the filters. The merge reads the records of all N jobs as one
stream in the global row order (manifest: row index; tar shards: file, then place in the file),
rebuilds the rules from the jobs' config, and replays the decisions (`twostage.Replay`): the
rules' own `decide_batch` rebuild the hash sets and the FAISS index over the whole input, so a
row whose duplicate went to another job is found now, and the first occurrence in the global
order is kept. The kept rows are then copied from the input into MERGED, in the input's format;
MERGED holds what an unsharded run of the same config writes (same rows, same order, same
report counts; example thumbnails only for manifests).

Refused with one line: an OUT that is no finished `--shard` job, jobs of different configs or
inputs or N, a job given twice, or missing jobs.
"""

from __future__ import annotations

import heapq
import json
import sys
from pathlib import Path

from vlmkit.curation.config import CurateConfig, parse_config
from vlmkit.curation.engine import build_rules
from vlmkit.curation.io import RowWriter
from vlmkit.curation.shard import ShardedInput
from vlmkit.curation.twostage import Replay, finish, kept_rows, load_records, new_tally, prepare_out
from vlmkit.errors import ConfigError, OutputError
from vlmkit.outputs import check_output_dir


def read_job(out: Path) -> dict:
    path = out / ".curate" / "merge" / "job.json"
    if not (path.is_file() and (path.parent / "records.jsonl").is_file()):
        raise OutputError(f"{out} holds no finished `vlmkit data curate --shard` job (no {path})")
    return json.loads(path.read_text())


def check_jobs(outs: list[Path], jobs: list[dict]) -> None:
    """All jobs of one sharded run: same config, input and N, each I once, none missing."""
    first = jobs[0]
    for out, job in zip(outs, jobs):
        for field, what in (("digest", "config"), ("input_fingerprint", "input")):
            if job[field] != first[field]:
                raise ConfigError(f"cannot merge {out} with {outs[0]}: they were curated with a different {what}")
        if job["shard"][1] != first["shard"][1]:
            raise ConfigError(f"cannot merge {out} (a job of {job['shard'][1]}) with jobs of {first['shard'][1]}")
    parts = sorted(job["shard"][0] for job in jobs)
    n = first["shard"][1]
    if len(set(parts)) != len(parts):
        raise ConfigError(f"a job is given twice: shards {', '.join(map(str, parts))} of {n}")
    if parts != list(range(n)):
        missing = sorted(set(range(n)) - set(parts))
        raise ConfigError(f"curate-merge needs all {n} jobs; missing shard(s) {', '.join(map(str, missing))}")


def config_from_dict(d: dict) -> CurateConfig:
    """The `CurateConfig` a job saved (`CurateConfig.to_dict`)."""
    return parse_config({"run": d["run"], "rules": {name: table for name, table in d["rules"]}})


def curate_merge(outs: list[str | Path], merged: str | Path) -> dict:
    """Merge the `--shard` job folders `outs` into `merged`; returns its report."""
    outs = [Path(o) for o in outs]
    jobs = [read_job(o) for o in outs]
    check_jobs(outs, jobs)
    config = config_from_dict(jobs[0]["config"])
    merged = Path(merged)
    check_output_dir(merged, overwrite=True)
    rules = build_rules(config)
    fingerprint = {"engine": "merge", "config": config.digest(), "input": jobs[0]["input_fingerprint"],
                   "jobs": sorted(str(o.resolve()) for o in outs)}  # fmt: skip
    done = prepare_out(merged, fingerprint)
    if done is not None:
        return done
    tally = new_tally(merged, config, rules)
    replay = Replay(rules, tally, config.run.batch_size)
    streams = [load_records(o / ".curate" / "merge" / "records.jsonl") for o in outs]
    replay.feed(heapq.merge(*streams, key=lambda rec: rec["i"]))
    replay.flush()
    run = config.run
    inp = ShardedInput(jobs[0]["input"], run.text_field, run.image_field, 0, 1)  # the jobs' row indices
    writer = RowWriter(merged, inp.whole, run.shard_size)
    for row in kept_rows(inp.rows(), replay.kept):
        writer.write(row)
    return finish(merged, writer, config, rules, tally, fingerprint)


def add_parser(dsub) -> None:
    """Add `curate-merge` to `vlmkit data`'s sub-parsers."""
    p = dsub.add_parser("curate-merge", help="merge `curate --shard I/N` outputs with global deduplication",
                        description="Replay the dedup decisions of all N `vlmkit data curate --shard I/N` "
                        "jobs in the global row order and write the rows kept overall to --out.")  # fmt: skip
    p.add_argument("jobs", nargs="+", metavar="OUT", help="the output folders of the N jobs")
    p.add_argument("--out", required=True, help="output folder of the merged run (absent or empty)")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    report = curate_merge(args.jobs, args.out)
    removed = ", ".join(f"{k}={v}" for k, v in report["removed_by"].items())
    print(f"kept {report['rows_out']} of {report['rows_in']} rows ({removed}) -> {args.out}", file=sys.stdout)
    return 0
