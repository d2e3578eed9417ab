"""`vlmkit data curate IN OUT --engine ray`: the same rules as a Ray Data pipeline, resumable.

Stages (see `vlmkit.curation.twostage` for why the result equals the single-process engine's):

1. fit: rules that need a first look at the data (top-fraction threshold, k-means centroids,
   concept frequencies) are fitted on the driver, as by the default engine, and the fitted state is
   saved in the run's state and shipped to the workers;
2. score (parallel): the input is cut into *units*, contiguous row ranges a multiple of
   `run.batch_size` long and at most about `run.checkpoint_rows` (for tar shards, a first Ray pass
   counts the rows of each file), and ``ray.data.from_items(units).map_batches(_Scorer)`` runs each
   unit's rows, a batch at a time, through `score_rows` on an actor pool (one actor per CPU of the
   cluster; each builds the rules, and loads the score models, once); a unit's records come back,
   in input order, as one JSON-encoded blob (`twostage.encode_records`);
3. decide (driver, global): the records are replayed in input order (`Replay`): filters reuse their
   verdicts, stateful rules (dedup, k-means caps) decide with their own `decide_batch`;
4. write + commit: every `run.checkpoint_rows` rows (at a unit boundary), Ray tasks (`read_kept`)
   re-read the finished units and return the rows stage 3 kept; the driver writes them, in input
   order, with the default engine's writer (byte-identical files) and commits as the default engine
   does (`CurateRun._checkpoint`: writer offsets fsynced, each rule's decision state in a fresh
   ``ckpt-N``, tallies and the input position in ``state.json``, replaced atomically).

Resume. A killed run, rerun with the same input and config (on any number of workers), cuts the
output and score files back to the last commit, reloads the fitted and decision state, and
continues at the committed row: the rows of a partly written block are redone, so the output and
the report equal an uninterrupted run's byte for byte. The folder is tagged with the engine: a
folder of a default-engine run (or of another input or config) is refused.

Ray is started locally (or joined at ``RAY_ADDRESS``) when no Ray instance is up, and shut down at
the end; an instance the caller started is used and left running.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from itertools import groupby, islice
from pathlib import Path

import numpy as np

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.engine import CurateRun, build_rules
from vlmkit.curation.io import CurateInput
from vlmkit.curation.twostage import Replay, decode_records, encode_records, score_rows
from vlmkit.errors import ConfigError
from vlmkit.outputs import check_output_dir

UNITS_PER_WORKER = 4  # manifest units per worker: enough to balance, few enough to be cheap


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs ray: pip install 'vlmkit[curate]'") from None
    return ray


def unit_rows(unit: dict) -> Iterator[dict]:
    """The rows with index in [start, stop) of a manifest, or of tar files (global indices)."""
    inp = CurateInput(unit["source"], unit["text_field"], unit["image_field"])
    if inp.kind == "jsonl":
        return islice(inp.rows(unit["start"]), unit["stop"] - unit["start"])
    return _tar_range(inp, unit["offsets"], unit["start"], unit["stop"])


def _tar_range(inp: CurateInput, offsets: list[int], start: int, stop: int) -> Iterator[dict]:
    """Rows [start, stop) of tar files whose first rows have the global indices `offsets`
    (the last entry: the total); only the files overlapping the range are read."""
    for j, f in enumerate(inp.files):
        if offsets[j + 1] <= start or offsets[j] >= stop:
            continue
        for row in CurateInput(f, inp.text_field, inp.image_field).rows():
            index = offsets[j] + row["__index__"]
            if start <= index < stop:
                yield row | {"__index__": index}


def _batches(rows: Iterator[dict], batch_size: int) -> Iterator[list[dict]]:
    """Batches of the single-process engine: rows grouped by ``index // batch_size``."""
    for _, group in groupby(rows, key=lambda r: r["__index__"] // batch_size):
        yield list(group)


class _Scorer:
    """Ray actor: builds the rules once, then scores units (one per call) into record blobs."""

    def __init__(self, config: CurateConfig, fitted: dict) -> None:
        from vlmkit.curation import rule_modules  # noqa: F401  (registers the rules in this worker)

        self.rules = build_rules(config)
        for rule in self.rules:
            if rule.name in fitted:
                rule.load_fitted(fitted[rule.name])
        self.batch_size = config.run.batch_size

    def __call__(self, batch: dict) -> dict:
        blobs = []
        for text in batch["unit"]:
            rows = unit_rows(json.loads(text))
            recs = [rec for b in _batches(rows, self.batch_size) for rec in score_rows(b, self.rules)]
            blobs.append(encode_records(recs))
        return {"blob": np.array(blobs, dtype=object)}


def read_kept(unit_json: str) -> bytes:
    """Ray task: the rows of a unit that stage 3 kept (``unit["keep"]``), as the writer needs them."""
    unit = json.loads(unit_json)
    keep = set(unit["keep"])
    rows = [{k: r[k] for k in ("__key__", "out_meta", "members") if k in r}
            for r in unit_rows(unit) if r["__index__"] in keep]  # fmt: skip
    return encode_records(rows)


def tar_offsets(ray, inp: CurateInput, run) -> list[int]:
    """Global index of the first row of each tar file (the last entry: the total), counted on Ray."""
    count = ray.remote(lambda f: sum(1 for _ in CurateInput(f, run.text_field, run.image_field).rows()))
    counts = ray.get([count.remote(str(f)) for f in inp.files])
    return np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()


def units(inp: CurateInput, run, offsets: list[int] | None, start: int, workers: int) -> list[dict]:
    """Contiguous row ranges from row `start` (a multiple of the batch size) to the end, each a
    multiple of the batch size long, so that every batch of the single-process engine is scored
    whole, by one actor (batched model scores match bit for bit), and at most about
    `run.checkpoint_rows` long, so that a commit follows every such many rows."""
    n = inp.count() if offsets is None else offsets[-1]
    b = run.batch_size
    size = b * max(1, -(-(n - start) // (b * workers * UNITS_PER_WORKER)))
    size = min(size, b * -(-run.checkpoint_rows // b))
    base = {"source": inp.source, "text_field": run.text_field, "image_field": run.image_field, "offsets": offsets}
    return [base | {"start": s, "stop": min(s + size, n)} for s in range(start, n, size)]


def _blobs(ds) -> Iterator[list]:
    for row in ds.iter_rows():
        yield decode_records(row["blob"])


class RayCurateRun(CurateRun):
    """`CurateRun` (fit, checkpoints, resume, report) with the score stage on Ray: the remaining
    units stream through an actor pool, the driver replays each unit's records in input order and,
    every `run.checkpoint_rows` rows, writes the kept rows of the finished units (read by Ray tasks)
    and commits (`CurateRun._checkpoint`: writer offsets, rule state, tally, position)."""

    engine = "ray"

    def __init__(self, ray, inp: CurateInput, out: Path, config: CurateConfig) -> None:
        super().__init__(inp, out, config, build_rules(config))
        self.ray = ray

    def _loop(self) -> None:
        ray, run = self.ray, self.config.run
        if self.inp.kind == "shards" and "offsets" not in self.state:
            self.state["offsets"] = tar_offsets(ray, self.inp, run)  # saved by the next commit
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        todo = units(self.inp, run, self.state.get("offsets"), self.state["position"], workers)
        if not todo:
            return
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # records in input order
        scored = ray.data.from_items([{"unit": json.dumps(u)} for u in todo]).map_batches(
            _Scorer, fn_constructor_kwargs={"config": self.config, "fitted": self.state["fitted"]}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))))  # fmt: skip
        replay = Replay(self.rules, self.tally, run.batch_size)
        block = []
        for unit, recs in zip(todo, _blobs(scored)):
            replay.feed(recs)
            block.append(unit)
            if unit["stop"] - self.state["position"] >= run.checkpoint_rows or unit is todo[-1]:
                replay.flush()
                self._commit(block, replay)
                block = []

    def _commit(self, block: list[dict], replay: Replay) -> None:
        """Write the kept rows of `block` (units whose records were all replayed), then checkpoint."""
        kept = np.asarray(replay.kept, dtype=np.int64)
        replay.kept = array("q")
        task = self.ray.remote(read_kept)
        refs = []
        for unit in block:
            part = kept[np.searchsorted(kept, unit["start"]) : np.searchsorted(kept, unit["stop"])]
            if len(part):
                refs.append(task.remote(json.dumps(unit | {"keep": part.tolist()})))
        for ref in refs:
            for row in decode_records(self.ray.get(ref)):
                self.writer.write(row)
        self._checkpoint(block[-1]["stop"])


def curate_ray(source: str | Path, out: str | Path, config: CurateConfig) -> dict:
    """Curate `source` into `out` on Ray, resuming a killed run (see the module doc); returns the report."""
    ray = _ray()
    inp = CurateInput(source, config.run.text_field, config.run.image_field)
    out = Path(out)
    check_output_dir(out, overwrite=True)
    job = RayCurateRun(ray, inp, out, config)  # refuses a folder holding another run
    if job.state is not None and job.state.get("done"):
        return job.run()
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    try:
        return job.run()
    finally:
        if started:
            ray.shutdown()
