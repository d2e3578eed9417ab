"""Curation in two stages, for engines that score rows in parallel: `--engine ray`, `--shard i/N`
and `curate-merge` (the single-process engine, `vlmkit.curation.engine`, does both at once).

1. **Score** (`score_rows`, any process, any order of batches): a batch of rows goes through the
   chain of rules as in `engine.process_batch`, except that *stateful* rules (those whose decisions
   depend on earlier decisions: dedup indexes, per-cluster counts; see `is_stateful`) only score:
   their values (hashes, embeddings, cluster ids) are recorded and every row is passed on. Stateless
   rules score and decide, and the rows they remove go no further. The result is one small
   *record* per row: its index, key, caption, image path, unreadable reason, and per rule it
   reached either ``(kept, summary)`` (stateless) or the rule's value (stateful).
2. **Decide** (`Replay`, one process, input order): the records are walked through the chain again,
   in batches of the input's row index (``index // batch_size``, the single-process engine's
   batches for a plain run), calling the stateful rules' own `decide_batch` on the values of the
   rows that reach them and reusing the recorded verdicts of the stateless ones; the report's
   `Tally` is filled exactly as the single-process engine fills it.

A row reaches a rule in stage 2 only if it reached it in stage 1 (stage 1 removes a subset), so
every value stage 2 needs was recorded, and the kept rows are those of the single-process engine.
Records hold no image data: about 100 bytes per row plus E floats per row for `embed_dedup`.
"""

from __future__ import annotations

import base64
import json
import shutil
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.io import RowWriter
from vlmkit.curation.rules import RowError, RuleBase, image_of
from vlmkit.curation.tally import Tally
from vlmkit.errors import OutputError
from vlmkit.outputs import atomic_write_bytes


def is_stateful(rule: RuleBase) -> bool:
    """Whether a rule's decisions depend on earlier rows' decisions. By the rule contract
    (`vlmkit.curation.rules`) exactly those rules save decision state (`save` / `load`)."""
    return type(rule).save is not RuleBase.save


def _record(row: dict) -> dict:
    return {"i": row["__index__"], "key": row["__key__"], "text": row.get("text", ""),
            "path": row.get("image_path"), "err": row.get("__error__"), "img_err": None, "steps": []}  # fmt: skip


def _image_error(row: dict) -> str | None:
    """Why the row's image cannot be used (missing_image, undecodable_image), or None."""
    try:
        image_of(row)
    except RowError as e:
        return e.reason
    return None


def score_rows(rows: list[dict], rules: list[RuleBase]) -> list[dict]:
    """Stage 1 for one batch of rows (in input order): one record per row, in the same order."""
    recs = {r["__index__"]: _record(r) for r in rows}
    alive = [r for r in rows if "__error__" not in r]
    for rule in rules:
        if rule.needs_image:
            for r in alive:
                recs[r["__index__"]]["img_err"] = _image_error(r)
            alive = [r for r in alive if recs[r["__index__"]]["img_err"] is None]
        values = rule.score_batch(alive)
        if is_stateful(rule):
            for r, v in zip(alive, values):
                recs[r["__index__"]]["steps"].append(v)
            continue
        kept = []
        for r, v, k in zip(alive, values, rule.decide_batch(values)):
            recs[r["__index__"]]["steps"].append((bool(k), rule.summary(v)))
            if k:
                kept.append(r)
        alive = kept
    return list(recs.values())


def _light_row(rec: dict) -> dict:
    """What the report's examples need of a row (a manifest's image path gives a thumbnail)."""
    row = {"__key__": rec["key"], "text": rec["text"]}
    return row | {"image_path": rec["path"]} if rec["path"] else row


class Replay:
    """Stage 2: the in-order decisions over records; `kept` collects the kept row indices."""

    def __init__(self, rules: list[RuleBase], tally: Tally, batch_size: int) -> None:
        self.rules, self.tally, self.batch_size = rules, tally, batch_size
        self.kept = array("q")
        self._pending: list[dict] = []

    def decide(self, recs: list[dict]) -> list[dict]:
        """Run one batch of records (input order) through the chain; returns the kept records."""
        self.tally.rows_in += len(recs)
        alive = []
        for rec in recs:
            if rec["err"] is not None:
                self.tally.unreadable[rec["err"]] += 1
            else:
                alive.append(rec)
        for pos, rule in enumerate(self.rules):
            if rule.needs_image:
                for rec in alive:
                    if rec["img_err"] is not None:
                        self.tally.unreadable[rec["img_err"]] += 1
                alive = [rec for rec in alive if rec["img_err"] is None]
            if is_stateful(rule):
                values = [rec["steps"][pos] for rec in alive]
                verdicts = list(zip(rule.decide_batch(values), map(rule.summary, values)))
            else:
                verdicts = [rec["steps"][pos] for rec in alive]
            kept = []
            for rec, (keep, summary) in zip(alive, verdicts):
                self.tally.record(rule.name, _light_row(rec), summary, bool(keep))
                if keep:
                    kept.append(rec)
            alive = kept
        self.tally.rows_out += len(alive)
        self.kept.extend(rec["i"] for rec in alive)
        return alive

    def feed(self, recs: Iterable[dict]) -> None:
        """Records in increasing index order, batched by ``index // batch_size``."""
        for rec in recs:
            if self._pending and rec["i"] // self.batch_size != self._pending[0]["i"] // self.batch_size:
                self.flush()
            self._pending.append(rec)

    def flush(self) -> None:
        if self._pending:
            self.decide(self._pending)
            self._pending = []


def kept_rows(rows: Iterable[dict], kept: array) -> Iterator[dict]:
    """The rows whose index is in `kept` (both in increasing index order), streamed."""
    it = iter(kept)
    want = next(it, None)
    for row in rows:
        while want is not None and want < row["__index__"]:
            want = next(it, None)
        if want is None:
            return
        if row["__index__"] == want:
            yield row


def prepare_out(out: Path, fingerprint: dict) -> dict | None:
    """The report of a finished run of the same input and config in `out` (None: run it). A run of
    this kind that did not finish is removed (these engines restart rather than resume); any other
    content is refused, as by the single-process engine."""
    state_path = out / ".curate" / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != fingerprint:
            raise OutputError(f"output folder {out} holds a curate run of another input or config; "
                              "choose another folder (or remove it)")  # fmt: skip
        if state.get("done"):
            return json.loads((out / "report.json").read_text())
        if state.get("restartable"):
            shutil.rmtree(out)
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty and holds no curate run; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_state(out, {"fingerprint": fingerprint, "done": False, "restartable": True})
    return None


def _write_state(out: Path, state: dict) -> None:
    (out / ".curate").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ".curate" / "state.json", json.dumps(state, sort_keys=True).encode())


def new_tally(out: Path, config: CurateConfig, rules: list[RuleBase]) -> Tally:
    run = config.run
    return Tally([r.name for r in rules], out / ".curate" / "scores", run.examples, run.thumb_size)


def finish(out: Path, writer: RowWriter, config: CurateConfig, rules: list[RuleBase], tally: Tally,
           fingerprint: dict) -> dict:  # fmt: skip
    """Close the output, write report.json / report.html and mark the run done."""
    from vlmkit.curation.report import write_reports

    writer.close()
    report = write_reports(out, config, rules, tally)
    tally.close()
    shutil.rmtree(out / ".curate" / "scores", ignore_errors=True)
    _write_state(out, {"fingerprint": fingerprint, "done": True})
    return report


def _encode(v):
    """JSON-safe form of a record value, tagged so `_decode` restores it exactly (no pickle: a
    merge reads files other jobs wrote, and loading must never run code)."""
    if isinstance(v, np.ndarray):
        return {"__nd__": [str(v.dtype), list(v.shape), base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()]}
    if isinstance(v, np.generic):
        return {"__ns__": [str(v.dtype), base64.b64encode(v.tobytes()).decode()]}  # keeps its dtype
    if isinstance(v, bytes):
        return {"__b__": base64.b64encode(v).decode()}
    if isinstance(v, tuple):
        return {"__t__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _encode(x) for k, x in v.items()}
        return {"__d__": [[_encode(k), _encode(x)] for k, x in v.items()]}
    return v


def _decode(v):
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__nd__" in v:
        dtype, shape, data = v["__nd__"]
        return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
    if "__ns__" in v:
        dtype, data = v["__ns__"]
        return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype))[0]
    if "__b__" in v:
        return base64.b64decode(v["__b__"])
    if "__t__" in v:
        return tuple(_decode(x) for x in v["__t__"])
    if "__d__" in v:
        return {_decode(k): _decode(x) for k, x in v["__d__"]}
    return {k: _decode(x) for k, x in v.items()}


def encode_records(recs: list) -> bytes:
    """One JSON line (newline-terminated) for a batch of records or rows."""
    return (json.dumps(_encode(recs), separators=(",", ":")) + "\n").encode()


def decode_records(line: bytes | str) -> list:
    return _decode(json.loads(line))


def dump_records(f, recs: list[dict]) -> None:
    f.write(encode_records(recs))


def load_records(path: Path) -> Iterator[dict]:
    """The records a `--shard` job saved (JSON lines written by this package; see `vlmkit.curation.shard`)."""
    with open(path, "rb") as f:
        for line in f:
            yield from decode_records(line)
