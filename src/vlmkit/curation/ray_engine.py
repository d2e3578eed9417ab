"""`vlmkit data curate IN OUT --engine ray`: the same rules as a Ray Data pipeline.

Stages (see `vlmkit.curation.twostage` for why the result equals the single-process engine's):

1. fit: rules that need a first look at the data (top-fraction threshold, k-means centroids,
   concept frequencies) are fitted on the driver, as by the default engine, and the fitted state is
   shipped to the workers;
2. score (parallel): the input is cut into *units*, contiguous row ranges a multiple of
   `run.batch_size` long (for tar shards, a first Ray pass counts the rows of each file), and
   ``ray.data.from_items(units).map_batches(_Scorer)`` runs each unit's rows, a batch at a time,
   through `score_rows` on an actor pool (one actor per CPU of the cluster; each builds the rules,
   and loads the score models, once); a unit's records come back as one JSON-encoded blob (`twostage.encode_records`);
3. decide (driver, global): the records are replayed in input order (`Replay`): filters reuse their
   verdicts, stateful rules (dedup, k-means caps) decide with their own `decide_batch`;
4. filter + write: ``map_batches(_read_kept)`` re-reads each unit and keeps the rows stage 3 kept;
   the driver writes them, in input order, with the default engine's writer (byte-identical files).

Ray is started locally (or joined at ``RAY_ADDRESS``) when no Ray instance is up, and shut down at
the end; an instance the caller started is used and left running. The run is not resumable (Ray
retries failed tasks; a killed run restarts from scratch in the same OUT).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import groupby, islice
from pathlib import Path

import numpy as np

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.engine import _fit, build_rules
from vlmkit.curation.io import CurateInput, RowWriter
from vlmkit.curation.twostage import (Replay, decode_records, encode_records, finish, new_tally, prepare_out,
                                      score_rows)
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


def _read_kept(batch: dict) -> dict:
    """Ray task: the rows of each unit that stage 3 kept, as the writer needs them."""
    blobs = []
    for text in batch["unit"]:
        unit = json.loads(text)
        keep = set(unit["keep"])
        rows = [{k: r[k] for k in ("__key__", "out_meta", "members") if k in r}
                for r in unit_rows(unit) if r["__index__"] in keep]  # fmt: skip
        blobs.append(encode_records(rows))
    return {"blob": np.array(blobs, dtype=object)}


def _units(ray, inp: CurateInput, config: CurateConfig, workers: int) -> list[dict]:
    """Contiguous row ranges, each a multiple of the batch size long, so that every batch of the
    single-process engine is scored whole, by one actor (batched model scores match bit for bit)."""
    run = config.run
    unit = {"source": inp.source, "text_field": run.text_field, "image_field": run.image_field, "offsets": None}
    if inp.kind == "jsonl":
        n = inp.count()
    else:
        count = ray.remote(lambda f: sum(1 for _ in CurateInput(f, run.text_field, run.image_field).rows()))
        counts = ray.get([count.remote(str(f)) for f in inp.files])  # rows per file, for global indices
        unit["offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        n = unit["offsets"][-1]
    b = run.batch_size
    size = b * max(1, -(-n // (b * workers * UNITS_PER_WORKER)))
    return [unit | {"start": s, "stop": min(s + size, n)} for s in range(0, max(n, 1), size)]


def _blobs(ds) -> Iterator[list]:
    for row in ds.iter_rows():
        yield decode_records(row["blob"])


def _pipeline(ray, inp: CurateInput, out: Path, config: CurateConfig, fingerprint: dict) -> dict:
    rules = build_rules(config)
    fitted = _fit(rules, inp, config.run.batch_size)
    workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    units = _units(ray, inp, config, workers)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # records in input order
    items = [{"unit": json.dumps(u)} for u in units]
    scored = ray.data.from_items(items).map_batches(
        _Scorer, fn_constructor_kwargs={"config": config, "fitted": fitted}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(units))))  # fmt: skip
    tally = new_tally(out, config, rules)
    replay = Replay(rules, tally, config.run.batch_size)
    bounds = []  # (first, last) row index of each unit, to hand each its kept rows
    for recs in _blobs(scored):
        bounds.append((recs[0]["i"], recs[-1]["i"]) if recs else (0, -1))
        replay.feed(recs)
    replay.flush()
    kept = np.asarray(replay.kept, dtype=np.int64)
    for item, unit, (lo, hi) in zip(items, units, bounds):
        part = kept[np.searchsorted(kept, lo) : np.searchsorted(kept, hi, side="right")]
        item["unit"] = json.dumps(unit | {"keep": part.tolist()})
    writer = RowWriter(out, inp, config.run.shard_size)
    for rows in _blobs(ray.data.from_items(items).map_batches(_read_kept, batch_size=1)):
        for row in rows:
            writer.write(row)
    return finish(out, writer, config, rules, tally, fingerprint)


def curate_ray(source: str | Path, out: str | Path, config: CurateConfig) -> dict:
    """Curate `source` into `out` on Ray (see the module doc); returns the report."""
    ray = _ray()
    inp = CurateInput(source, config.run.text_field, config.run.image_field)
    out = Path(out)
    check_output_dir(out, overwrite=True)
    fingerprint = {"engine": "ray", "config": config.digest(), "input": inp.fingerprint()}
    done = prepare_out(out, fingerprint)
    if done is not None:
        return done
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    try:
        return _pipeline(ray, inp, out, config, fingerprint)
    finally:
        if started:
            ray.shutdown()
