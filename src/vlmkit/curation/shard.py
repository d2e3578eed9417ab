"""`vlmkit data curate IN OUT --shard I/N`: one job of a plain job array (SLURM, a shell loop).

Assignment (deterministic, no coordination): for tar shards, job I takes the shard files
(sorted, as the input resolves them) whose position j has j % N == I; for a JSONL manifest, job I
takes the rows (non-blank lines, counted from 0) whose index r has r % N == I. I is 0-based
(`--shard $SLURM_ARRAY_TASK_ID/N` with an array 0..N-1).

Each job writes its own OUT: the rows it keeps (deduplicated within the job) and its report, as an
unsharded run would, plus ``OUT/.curate/merge/``: ``job.json`` (config, input, I/N) and
``records.jsonl``, the stage-1 records of `vlmkit.curation.twostage` (hashes, embeddings and
verdicts of every row of the job), written to a temporary name and renamed when the job is done.
`vlmkit data curate-merge` (`vlmkit.curation.merge`) replays the records of all N jobs in the
global order and removes cross-shard duplicates.

Row indices stay global: a manifest row keeps its index r; a row of tar file j has index
``j << 32 | k`` (k: its place in the file), so the merge orders rows by (file, place). Rules that
fit on the data (a `top_fraction` score threshold, `kmeans_balance`, `concept_balance`) need the
whole input, so `--shard` refuses them: run them over the merged output. A killed job is rerun from
its start (its partial OUT is replaced).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.engine import build_rules
from vlmkit.curation.io import CurateInput, RowWriter
from vlmkit.curation.rules import chunks
from vlmkit.curation.twostage import Replay, dump_records, finish, new_tally, prepare_out, score_rows
from vlmkit.errors import ConfigError
from vlmkit.outputs import atomic_write_bytes, check_output_dir

FILE_SHIFT = 32  # tar rows: index = file position << 32 | row in file


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; anything else: one line."""
    head, sep, tail = str(text).partition("/")
    if not (sep and head.strip().isdigit() and tail.strip().isdigit()):
        raise ConfigError(f"--shard {text!r} is not I/N (e.g. 0/4: job 0 of 4)")
    i, n = int(head), int(tail)
    if n < 1 or i >= n:
        raise ConfigError(f"--shard {text}: need 0 <= I < N (I counts from 0)")
    return i, n


class ShardedInput:
    """The rows of job `part` of `parts` of a curate input, with global row indices (see module doc)."""

    def __init__(self, source: str | Path, text_field: str, image_field: str, part: int, parts: int) -> None:
        self.whole = CurateInput(source, text_field, image_field)
        self.kind, self.files = self.whole.kind, self.whole.files
        self.part, self.parts = part, parts

    def fingerprint(self) -> str:
        return f"{self.whole.fingerprint()}:{self.part}/{self.parts}"

    def rows(self) -> Iterator[dict]:
        if self.kind == "jsonl":
            return (r for r in self.whole.rows() if r["__index__"] % self.parts == self.part)
        return self._shard_rows()

    def _shard_rows(self) -> Iterator[dict]:
        w = self.whole
        for j in range(self.part, len(self.files), self.parts):
            first = j << FILE_SHIFT
            for row in CurateInput(self.files[j], w.text_field, w.image_field).rows():
                yield row | {"__index__": first + row["__index__"]}


def refuse_fitted(rules, what: str) -> None:
    for rule in rules:
        if rule.fit_rows:
            raise ConfigError(f"{what} cannot run rule {rule.name}: it is fitted on the whole input "
                              "(run it over the merged output)")  # fmt: skip


def job_meta(inp: ShardedInput, config: CurateConfig) -> dict:
    return {"config": config.to_dict(), "digest": config.digest(), "input": str(Path(inp.whole.source).resolve()),
            "input_fingerprint": inp.whole.fingerprint(), "shard": [inp.part, inp.parts], "kind": inp.kind}  # fmt: skip


def curate_shard(source: str | Path, out: str | Path, config: CurateConfig, shard: tuple[int, int]) -> dict:
    """Run job `shard` = (I, N) of `source` into `out`; returns its report (see module doc)."""
    inp = ShardedInput(source, config.run.text_field, config.run.image_field, *shard)
    out = Path(out)
    check_output_dir(out, overwrite=True)
    rules = build_rules(config)
    refuse_fitted(rules, "--shard")
    fingerprint = {"engine": "shard", "config": config.digest(), "input": inp.fingerprint()}
    done = prepare_out(out, fingerprint)
    if done is not None:
        return done
    merge_dir = out / ".curate" / "merge"
    merge_dir.mkdir(parents=True, exist_ok=True)
    tally = new_tally(out, config, rules)
    replay, writer = Replay(rules, tally, config.run.batch_size), RowWriter(out, inp.whole, config.run.shard_size)
    tmp = merge_dir / "records.jsonl.tmp"
    with open(tmp, "wb") as f:
        for batch in chunks(inp.rows(), config.run.batch_size):
            recs = score_rows(batch, rules)
            dump_records(f, recs)
            by_index = {r["__index__"]: r for r in batch}
            for rec in replay.decide(recs):
                writer.write(by_index[rec["i"]])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, merge_dir / "records.jsonl")
    atomic_write_bytes(merge_dir / "job.json", json.dumps(job_meta(inp, config), sort_keys=True).encode())
    return finish(out, writer, config, rules, tally, fingerprint)


def run_scaled(source: str | Path, out: str | Path, config: CurateConfig, engine: str, shard: str | None) -> dict:
    """The CLI's `--engine ray` / `--shard I/N` (one of them; a Ray job of a job array is not a thing)."""
    if shard is not None:
        parsed = parse_shard(shard)
        if engine != "default":
            raise ConfigError("--shard splits the input for plain job arrays; it does not combine with --engine ray")
        return curate_shard(source, out, config, parsed)
    from vlmkit.curation.ray_engine import curate_ray

    return curate_ray(source, out, config)
