"""The curate report: ``report.json`` (counts), ``report/<rule>.png`` (score histograms drawn with
PIL) and ``report.html`` (one self-contained page: counts per rule, histograms and the first
removed rows of each rule with thumbnails, all embedded as data URIs; nothing is fetched).

Nothing in the report depends on time or machine, so two runs give identical files.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmkit.curation.config import CurateConfig
from vlmkit.curation.rules import RULES, RuleBase
from vlmkit.curation.tally import Tally
from vlmkit.outputs import atomic_write_bytes

_W, _H, _PAD = 420, 180, 28


def histogram_png(values: np.ndarray, title: str, bins: int = 40) -> bytes:
    """A bar chart of `values` (float) with the range and counts marked, as PNG bytes."""
    image = Image.new("RGB", (_W, _H), "white")
    d = ImageDraw.Draw(image)
    d.text((_PAD, 4), title, fill="black")
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        counts, _ = np.histogram(values, bins=bins, range=(lo, hi if hi > lo else lo + 1))
        top, width = max(int(counts.max()), 1), (_W - 2 * _PAD) / bins
        for i, c in enumerate(counts):
            h = (_H - 2 * _PAD) * c / top
            x0 = _PAD + i * width
            d.rectangle([x0, _H - _PAD - h, x0 + width - 1, _H - _PAD], fill=(70, 110, 180))
        d.text((_PAD, _H - _PAD + 4), f"{lo:.4g}", fill="black")
        d.text((_W - _PAD - 40, _H - _PAD + 4), f"{hi:.4g}", fill="black")
        d.text((_W - _PAD - 90, 4), f"max count {top}", fill="black")
    d.line([_PAD, _H - _PAD, _W - _PAD, _H - _PAD], fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def build_report(config: CurateConfig, rules: list[RuleBase], tally: Tally) -> dict:
    """The report.json content: rows in/out, unreadable rows by reason, per rule counts, the
    removed-by table (each row counted under the first rule that removed it) and score stats.
    Categories are sorted: a resumed run's counts come back from its state in sorted order."""
    per_rule = {}
    for rule in rules:
        t = tally.rules[rule.name]
        scores = tally.scores(rule.name)
        stats = ({"min": float(scores.min()), "mean": float(scores.mean()), "max": float(scores.max())}
                 if len(scores) else None)  # fmt: skip
        categories = dict(sorted(t["categories"].items()))
        per_rule[rule.name] = {"doc": RULES[rule.name].doc, "seen": t["seen"], "kept": t["kept"],
                               "removed": t["removed"], "score": stats, "categories": categories}  # fmt: skip
    return {
        "rows_in": tally.rows_in, "rows_out": tally.rows_out,
        "unreadable": dict(sorted(tally.unreadable.items())),
        "removed_by": {name: r["removed"] for name, r in per_rule.items()},
        "rules": per_rule, "config": config.to_dict(),
    }


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _cells(examples: list[dict], label: str) -> list[str]:
    e = html.escape
    cells = []
    for ex in examples:
        img = f"<img src='data:image/png;base64,{ex['thumb']}'>" if ex["thumb"] else "<i>no image</i>"
        cells.append(f"<div class='ex {label}'>{img}<br><b>{label}</b> <code>{e(ex['key'])}</code><br>"
                     f"score: {e(str(ex['score']))}<br>{e(ex['text'])}</div>")
    return cells


def _rule_section(name: str, info: dict, examples: dict, png: bytes | None, n: int) -> str:
    e = html.escape
    parts = [f"<h2 id='{e(name)}'>{e(name)}</h2><p>{e(info['doc'])}: seen {info['seen']}, kept {info['kept']}, "
             f"removed {info['removed']}.</p>"]
    if png is not None:
        parts.append(f"<img alt='{e(name)} histogram' src='{_data_uri(png)}'>")
    if info["categories"]:
        rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in info["categories"].items())
        parts.append(f"<table><tr><th>value</th><th>rows</th></tr>{rows}</table>")
    removed = examples["removed"][:n]
    cells = _cells(removed, "removed") + _cells(examples["kept"][: n - len(removed)], "kept")
    if not removed:
        parts.append("<p>No row was removed by this rule.</p>")
    if cells:
        parts.append(f"<h3>Examples: the first removed rows, then the first kept ones</h3>"
                     f"<div class='grid'>{''.join(cells)}</div>")
    return "\n".join(parts)


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:2px 8px}.grid{display:flex;flex-wrap:wrap;gap:8px}"
          ".ex{width:170px;font-size:12px;border:1px solid #ddd;padding:4px;overflow-wrap:anywhere}")


def render_html(report: dict, examples: dict[str, dict], pngs: dict[str, bytes], n: int) -> str:
    """The page; `examples[rule]` = {"removed": [...], "kept": [...]}, `n` examples shown per rule."""
    e = html.escape
    head = "".join(f"<tr><td><a href='#{e(n)}'>{e(n)}</a></td><td>{r['seen']}</td><td>{r['kept']}</td>"
                   f"<td>{r['removed']}</td></tr>" for n, r in report["rules"].items())  # fmt: skip
    bad = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in report["unreadable"].items()) or \
        "<tr><td colspan=2>none</td></tr>"
    sections = "\n".join(_rule_section(k, r, examples[k], pngs.get(k), n) for k, r in report["rules"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vlmkit curate report</title>"
            f"<style>{_STYLE}</style></head><body><h1>vlmkit curate report</h1>"
            f"<p>{report['rows_in']} rows in, {report['rows_out']} kept.</p>"
            f"<table><tr><th>rule (run order)</th><th>seen</th><th>kept</th><th>removed</th></tr>{head}</table>"
            f"<h3>Unreadable rows</h3><table><tr><th>reason</th><th>rows</th></tr>{bad}</table>"
            f"{sections}</body></html>\n")


def write_reports(out: Path, config: CurateConfig, rules: list[RuleBase], tally: Tally) -> dict:
    report = build_report(config, rules, tally)
    pngs = {}
    for rule in rules:
        scores = tally.scores(rule.name)
        if len(scores):
            pngs[rule.name] = histogram_png(scores, f"{rule.name}: {rule.measures}, {len(scores)} rows")
            atomic_write_bytes(out / "report" / f"{rule.name}.png", pngs[rule.name])
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    examples = {r.name: {"removed": tally.rules[r.name]["examples"], "kept": tally.rules[r.name]["kept_examples"]}
                for r in rules}  # fmt: skip
    atomic_write_bytes(out / "report.html", render_html(report, examples, pngs, config.run.examples).encode())
    return report
