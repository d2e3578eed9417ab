"""The single-process curate engine: stream rows in batches through the rules, write the kept rows,
checkpoint, resume, report.

Layout of OUT: the kept rows (``x.jsonl`` or ``shards/``), ``report.json``, ``report.html``,
``report/<rule>.png`` and ``.curate/`` (``state.json``; while running also ``ckpt-N/<rule>/``
with each rule's decision state and ``scores/`` with the report's score values).

Resume. Every `run.checkpoint_rows` input rows (at a batch boundary) the writer is flushed and
fsynced, the rules save their state into a fresh ``ckpt-N`` and ``state.json`` (input position,
writer offsets, tallies) is replaced atomically; then ``ckpt-(N-1)`` is removed. After a kill,
the next run with the same input and config cuts the outputs back to the recorded offsets,
reloads the rules and continues at the recorded row. Batches are fixed slices of the input
(rows [k * B, (k + 1) * B)), so every row is scored in the same batch as in an uninterrupted
run, and the output is byte-identical. A folder holding a run of another input or config is
refused.

The engine only wires things together: each rule is pure scoring plus in-order decisions
(`vlmkit.curation.rules`), which another engine can call per batch the same way.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.io import CurateInput, RowWriter
from vlmkit.curation.rules import RULES, Resources, RowError, RuleBase, chunks, image_of
from vlmkit.curation.tally import Tally
from vlmkit.errors import OutputError
from vlmkit.outputs import atomic_write_bytes, check_output_dir

STATE_VERSION = 1


def build_rules(config: CurateConfig) -> list[RuleBase]:
    resources = Resources(config.run.batch_size)
    return [RULES[name].build(cfg, resources) for name, cfg in config.rules]


def _readable(rows: list[dict], tally: Tally | None) -> list[dict]:
    """Rows whose image decodes; the others are counted as unreadable by reason."""
    out = []
    for r in rows:
        try:
            image_of(r)
            out.append(r)
        except RowError as e:
            if tally is not None:
                tally.unreadable[e.reason] += 1
    return out


def process_batch(rows: list[dict], rules: list[RuleBase], tally: Tally) -> list[dict]:
    """Run `rows` (one batch, input order) through the rules; returns the kept rows."""
    alive = []
    for r in rows:
        if "__error__" in r:
            tally.unreadable[r["__error__"]] += 1
        else:
            alive.append(r)
    for rule in rules:
        if rule.needs_image:
            alive = _readable(alive, tally)
        values = rule.score_batch(alive)
        decisions = rule.decide_batch(values)
        kept = []
        for r, v, k in zip(alive, values, decisions):
            tally.record(rule.name, r, rule.summary(v), bool(k))
            if k:
                kept.append(r)
        alive = kept
    return alive


def _fit(rules: list[RuleBase], inp: CurateInput, batch: int) -> dict:
    """Fit the rules that need a first look at the data; returns their fitted states."""
    fitted = {}
    for rule in rules:
        if not rule.fit_rows:
            continue
        rows = (r for r in inp.rows() if "__error__" not in r)
        if rule.needs_image:
            rows = (r for chunk in chunks(rows, batch) for r in _readable(chunk, None))
        rule.fit(rows if rule.fit_rows < 0 else islice(rows, rule.fit_rows))
        fitted[rule.name] = rule.fitted_state()
    return fitted


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _progress_bar(inp: CurateInput, position: int, enabled: bool):
    """tqdm on stderr (rows/s, ETA from the input's row count), or nothing when disabled or when
    tqdm (the [curate] extra) is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=inp.count(), initial=position, unit="rows", file=sys.stderr, dynamic_ncols=True,
                desc="curate")  # fmt: skip


def _open_run(out: Path, fingerprint: dict) -> dict | None:
    """The saved state of a run of the same input and config in `out` (None: start fresh)."""
    state_path = out / ".curate" / "state.json"
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != fingerprint:
            raise OutputError(f"output folder {out} holds a curate run of another input or config; "
                              "choose another folder (or remove it)")
        return state
    if (out / ".curate").is_dir() and [p.name for p in out.iterdir()] == [".curate"]:
        shutil.rmtree(out / ".curate")  # a run killed before its first checkpoint (while fitting)
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty and holds no curate run; choose a new or empty folder")
    return None


class CurateRun:
    """One run of `rules` over `inp` into `out`; `run()` does it (resuming if `out` has a state).
    Another engine subclasses it with its own `_loop` and `engine` tag (kept in the fingerprint,
    so a folder is only resumed by the engine that started it)."""

    engine: str | None = None

    def __init__(self, inp: CurateInput, out: Path, config: CurateConfig, rules: list[RuleBase],
                 progress: bool = False, on_batch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.inp, self.out, self.config, self.rules = inp, out, config, rules
        self.progress, self.on_batch = progress, on_batch
        self.work = out / ".curate"
        self.fingerprint = {"version": STATE_VERSION, "config": config.digest(), "input": inp.fingerprint()}
        if self.engine is not None:
            self.fingerprint["engine"] = self.engine
        self.state = _open_run(out, self.fingerprint)

    def run(self) -> dict:
        if self.state is not None and self.state.get("done"):
            return json.loads((self.out / "report.json").read_text())
        self.work.mkdir(parents=True, exist_ok=True)
        run = self.config.run
        self.tally = Tally([r.name for r in self.rules], self.work / "scores", run.examples, run.thumb_size)
        self.writer = RowWriter(self.out, self.inp, run.shard_size)
        if self.state is None:
            self.state = {"fingerprint": self.fingerprint, "fitted": _fit(self.rules, self.inp, run.batch_size),
                          "position": 0, "ckpt": 0, "done": False}
            self._checkpoint(0)
        else:
            self._restore()
        self._loop()
        return self._finish()

    def _restore(self) -> None:
        for rule in self.rules:
            if rule.name in self.state["fitted"]:
                rule.load_fitted(self.state["fitted"][rule.name])
            rule.load(self.work / f"ckpt-{self.state['ckpt']}" / rule.name)
        self.tally.resume(self.state["tally"])
        self.writer.resume(self.state["writer"])
        self._remove_checkpoints(keep=self.state["ckpt"])

    def _loop(self) -> None:
        run, position = self.config.run, self.state["position"]
        bar = _progress_bar(self.inp, position, self.progress)
        last = position
        with bar:
            for batch in chunks(self.inp.rows(position), run.batch_size):
                for row in process_batch(batch, self.rules, self.tally):
                    self.writer.write(row)
                    self.tally.rows_out += 1
                position += len(batch)
                self.tally.rows_in += len(batch)
                bar.update(len(batch))
                if position - last >= run.checkpoint_rows:
                    self._checkpoint(position)
                    last = position
                if self.on_batch is not None:
                    self.on_batch(position)
        self._checkpoint(position)

    def _checkpoint(self, position: int) -> None:
        n = self.state["ckpt"] + 1
        folder = self.work / f"ckpt-{n}"
        shutil.rmtree(folder, ignore_errors=True)  # a partial one left by a kill before its state
        for rule in self.rules:
            (folder / rule.name).mkdir(parents=True)
            rule.save(folder / rule.name)
        self.state |= {"position": position, "ckpt": n, "writer": self.writer.state(), "tally": self.tally.state()}
        atomic_write_bytes(self.work / "state.json", json.dumps(self.state, sort_keys=True).encode())
        self._remove_checkpoints(keep=n)

    def _remove_checkpoints(self, keep: int) -> None:
        for old in self.work.glob("ckpt-*"):
            if old.name != f"ckpt-{keep}":
                shutil.rmtree(old, ignore_errors=True)

    def _finish(self) -> dict:
        from vlmkit.curation.report import write_reports

        self.writer.close()
        report = write_reports(self.out, self.config, self.rules, self.tally)
        self.tally.close()
        self.state["done"] = True
        atomic_write_bytes(self.work / "state.json", json.dumps(self.state, sort_keys=True).encode())
        self._remove_checkpoints(keep=-1)
        shutil.rmtree(self.work / "scores", ignore_errors=True)
        return report


def curate(source: str | Path, out: str | Path, config: CurateConfig, *, progress: bool = False,
           on_batch: Callable[[int], None] | None = None) -> dict:  # fmt: skip
    """Curate `source` (JSONL manifest or tar shards) into `out` per `config`; returns the report.

    `on_batch(position)` is called after each batch is written (tests use it to interrupt a run).
    """
    inp = CurateInput(source, config.run.text_field, config.run.image_field)
    out = Path(out)
    check_output_dir(out, overwrite=True)  # refuses `.`, an ancestor, a file; emptiness checked by the run
    rules = build_rules(config)
    return CurateRun(inp, out, config, rules, progress, on_batch).run()
