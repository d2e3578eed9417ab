"""What a curate run counts: rows per rule (seen, kept, removed), unreadable rows by reason, the
report's score values (numeric ones appended to a float32 file per rule, categorical ones
counted) and, as examples with thumbnails, the first removed and the first kept rows of each rule.

Everything is saved in the run's state at each checkpoint and restored on resume (score files are
cut back to the recorded length), so the report of a resumed run equals an uninterrupted one's.
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import numpy as np

from vlmkit.curation.io import thumbnail_png
from vlmkit.curation.rules import RowError, image_of


class Tally:
    def __init__(self, rule_names: list[str], score_dir: Path, examples: int, thumb_size: int) -> None:
        self.names, self.score_dir = rule_names, score_dir
        self.examples, self.thumb_size = examples, thumb_size
        self.rows_in = self.rows_out = 0
        self.unreadable: Counter = Counter()
        self.rules = {n: {"seen": 0, "kept": 0, "removed": 0, "categories": Counter(), "n_scores": 0,
                          "examples": [], "kept_examples": []} for n in rule_names}  # fmt: skip
        score_dir.mkdir(parents=True, exist_ok=True)
        self.files = {n: open(score_dir / f"{n}.f32", "ab") for n in rule_names}

    def record(self, name: str, row: dict, summary, kept: bool) -> None:
        t = self.rules[name]
        t["seen"] += 1
        t["kept" if kept else "removed"] += 1
        if isinstance(summary, str):
            t["categories"][summary] += 1
        elif summary is not None:
            self.files[name].write(np.float32(summary).tobytes())
            t["n_scores"] += 1
        examples = t["kept_examples" if kept else "examples"]
        if len(examples) < self.examples:
            examples.append(self._example(row, summary))

    def _example(self, row: dict, summary) -> dict:
        try:
            png = thumbnail_png(image_of(row), self.thumb_size)
            thumb = base64.b64encode(png).decode()
        except RowError:
            thumb = None
        value = round(summary, 4) if isinstance(summary, float) else summary
        return {"key": row["__key__"], "text": row.get("text", "")[:300], "score": value, "thumb": thumb}

    def scores(self, name: str) -> np.ndarray:
        self.files[name].flush()
        return np.fromfile(self.score_dir / f"{name}.f32", dtype=np.float32)

    def state(self) -> dict:
        for f in self.files.values():
            f.flush()
        rules = {n: t | {"categories": dict(sorted(t["categories"].items()))} for n, t in self.rules.items()}
        return {"rows_in": self.rows_in, "rows_out": self.rows_out,
                "unreadable": dict(sorted(self.unreadable.items())), "rules": rules}

    def resume(self, state: dict) -> None:
        self.rows_in, self.rows_out = state["rows_in"], state["rows_out"]
        self.unreadable = Counter(state["unreadable"])
        for n, t in state["rules"].items():
            self.rules[n] = t | {"categories": Counter(t["categories"])}
            f = self.files[n]
            f.flush()
            f.truncate(4 * t["n_scores"])  # append mode: later writes go to the (new) end

    def close(self) -> None:
        for f in self.files.values():
            f.close()
