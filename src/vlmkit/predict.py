"""`vlmkit predict`: one task over a folder of images or a manifest, batched and resumable.

    vlmkit predict --images photos/ --task detect --objects "cat;dog" --out preds.jsonl

Rows: every image file directly in `--images DIR` (sorted by name; id = its name in DIR), or every
row of a `--data` manifest as `vlmkit eval` reads it (id = the row's "id" field, else its image
path as the manifest writes it; with `--task raw` and no `--prompt`, each row's "prefix" is its
prompt and is part of the id). Rows with the same id are predicted once.

The output is JSON Lines, one object per row in input order (a resumed run appends the rows the
earlier one did not reach)::

    {"id", "image", "task", "prompt", "text", "token_ids", "finish_reason", "boxes", "masks", "errors",
     "timing": {"seconds", "batch_seconds", "batch_size", "prefill_s", "decode_s", "new_tokens", ...}}

as `vlmkit generate --json` prints it (boxes in pixels of the image; "errors" are parse errors of
the generated text), plus the id and image and a per-row share of the batch's wall time. A row
whose image cannot be read (or whose prompt does not fit) is written as {"id", "image", "task",
"prompt", "error"} and counted per reason; the run goes on.

Resume: an existing output is read first and the rows it holds are skipped (`--force` starts
over). Each batch is appended with one write, and a trailing partial line (a run killed inside
that write) is cut off before appending, so a killed run never breaks the next one. Greedy
results equal `vlmkit generate`'s for the same image and task; sampled ones (`--temperature`)
depend on which rows share a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit import cli_types as T
from vlmkit.errors import ConfigError, DataError, OutputError, VlmkitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_LINE_START = b'{"id": '  # every output line starts so (json.dumps of a dict whose first key is "id")


@dataclass(kw_only=True)
class PredictSummary:
    """What `predict` did: rows written now, rows already in the output, failures per reason."""

    out: Path
    written: int = 0
    skipped: int = 0
    failed: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def format(self) -> str:
        parts = [f"wrote {self.written} row{'' if self.written == 1 else 's'} to {self.out}"]
        if self.skipped:
            parts.append(f"{self.skipped} already there")
        if self.failed:
            parts.append(f"{sum(self.failed.values())} failed")
        return f"{parts[0]}{' (' + ', '.join(parts[1:]) + ')' if parts[1:] else ''} in {self.seconds:.1f} s"


# --------------------------------------------------------------------------------------------- rows


def folder_rows(folder: str | Path) -> list[dict]:
    """{"id": name, "image": path} for every image file directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise DataError(f"--images {folder} {what}")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir())
    if not files:
        raise DataError(f"--images {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [{"id": p.name, "image": str(p)} for p in files]


def manifest_rows(path: str | Path, use_prefix: bool) -> list[dict]:
    """Rows of a JSONL manifest (`vlmkit.eval.runner.read_manifest`) with their ids; `use_prefix`:
    each row's "prefix" is its prompt (and part of its id)."""
    from vlmkit.eval.runner import read_manifest

    base = Path(path).parent
    rows = []
    for row in read_manifest(path):
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        written = [_relative(i, base) for i in images]  # as the manifest writes them
        out = {"id": str(row["id"]) if "id" in row else " + ".join(written), "image": row["image"]}
        if use_prefix:
            if not isinstance(row.get("prefix"), str):
                raise DataError(f"{path}:{row['line']} has no 'prefix' string to use as its prompt "
                                "(give --prompt or a --task)")
            out["prompt"] = row["prefix"]
            if "id" not in row:
                out["id"] += f" # {row['prefix']}"
        rows.append(out)
    return rows


def _relative(image: str, base: Path) -> str:
    try:
        return str(Path(image).relative_to(base))
    except ValueError:
        return image


def _unique(rows: Sequence[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append(r)
    return out


# ------------------------------------------------------------------------------------------- output


def read_done(out: Path, task: str) -> set[str]:
    """Ids of the rows an earlier run wrote to `out` (absent: none). A trailing partial line (a run
    killed inside its append) is cut off; anything else that is not an output line is refused."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    tail = data[len(complete):]
    if tail and not tail.startswith(_LINE_START[:len(tail)]):
        raise OutputError(f"{out} is not a predict output (its last line is not one); "
                          "choose another --out or pass --force to replace it")
    done = set()
    for n, line in enumerate(complete.splitlines(), start=1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or "id" not in row:
            raise OutputError(f"{out}:{n} is not a predict output line; choose another --out or pass "
                              "--force to replace it")
        if row.get("task") != task:
            raise OutputError(f"{out} holds --task {row.get('task')} rows, this run is --task {task}; "
                              "choose another --out or pass --force to replace it")
        done.add(row["id"])
    if tail:
        with open(out, "r+b") as f:
            f.truncate(len(complete))
    return done


def _append(out: Path, lines: list[str]) -> None:
    """Append `lines` with one write: a kill leaves at most a partial last line (cut on resume)."""
    data = "".join(line + "\n" for line in lines).encode()
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it in one write; the loop only guards a short write
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ predict


def predict(pipe, rows: Sequence[dict], out: str | Path, *, task: str = "raw", task_args: dict | None = None,
            batch_size: int = 8, sampling=None, mask_vae_path: str | Path | None = None, force: bool = False,
            progress: Callable[[int, int], None] | None = None) -> PredictSummary:
    """Run `task` on every row ({"id", "image", "prompt"?}) not already in `out`, `batch_size` rows
    per `pipe.generate_batch`, appending one JSON line per row (module docstring).

    `task_args` are `vlmkit.tasks.run.task_prompt`'s keywords (prompt, lang, question, answer,
    objects); a row's own "prompt" wins. `progress(done, total)` is called before the first batch
    and after each one (total: the rows not in `out` yet).
    Raises OutputError when `out` is a folder or holds other content, ConfigError for bad flags.
    """
    from vlmkit.outputs import check_output_file
    from vlmkit.tasks.run import task_prompt

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    out = check_output_file(out, overwrite=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if force:
        out.unlink(missing_ok=True)
    start = time.perf_counter()
    summary = PredictSummary(out=out)
    done = read_done(out, task)
    unique = _unique(rows)
    todo = [r for r in unique if r["id"] not in done]
    summary.skipped = len(unique) - len(todo)
    prompt = None if all("prompt" in r for r in todo) else task_prompt(pipe, task, **(task_args or {}))
    if progress is not None:
        progress(0, len(todo))
    for i in range(0, len(todo), batch_size):
        chunk = [{**r, "prompt": r.get("prompt", prompt)} for r in todo[i:i + batch_size]]
        lines = _predict_batch(pipe, chunk, task, sampling, mask_vae_path, summary.failed)
        _append(out, [json.dumps(line, ensure_ascii=False) for line in lines])
        summary.written += len(lines)
        if progress is not None:
            progress(summary.written, len(todo))
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_batch(pipe, chunk: list[dict], task: str, sampling, mask_vae_path, failed: Counter) -> list[dict]:
    """One output line per row of `chunk`: the readable images generated as one batch (row by row
    when the batch fails on a bad row, so that only that row gets the error)."""
    from vlmkit.data.image import load_image

    lines: list[dict | None] = [None] * len(chunk)
    good = []  # (index, [PIL images])
    for k, r in enumerate(chunk):
        try:
            good.append((k, [load_image(i) for i in (r["image"] if isinstance(r["image"], list) else [r["image"]])]))
        except VlmkitError as e:
            lines[k] = _error_line(r, task, e, failed)
    t0 = time.perf_counter()
    try:
        groups = [(good, pipe.generate_batch([chunk[k]["prompt"] for k, _ in good], [p for _, p in good],
                                             sampling))] if good else []
    except VlmkitError as e:
        groups = [([g], [e] if len(good) == 1 else _generate_alone(pipe, chunk[g[0]], g[1], sampling))
                  for g in good]
    seconds = time.perf_counter() - t0
    for members, results in groups:
        for (k, pil), res in zip(members, results):
            lines[k] = _error_line(chunk[k], task, res, failed) if isinstance(res, VlmkitError) else \
                _result_line(chunk[k], task, pil, res, mask_vae_path, seconds, len(good))
    return lines


def _generate_alone(pipe, row: dict, pil: list, sampling) -> list:
    try:
        return pipe.generate_batch([row["prompt"]], [pil], sampling)
    except VlmkitError as e:
        return [e]


def _result_line(row: dict, task: str, pil: list, result, mask_vae_path, seconds: float, n: int) -> dict:
    from vlmkit.tasks.run import task_output

    body = task_output(task, row["prompt"], pil, result, mask_vae_path).json
    body["timing"] = {"seconds": round(seconds / n, 6), "batch_seconds": round(seconds, 6), "batch_size": n,
                      **body["timing"]}
    return {"id": row["id"], "image": row["image"], **body}


def _error_line(row: dict, task: str, error: VlmkitError, failed: Counter) -> dict:
    """The row with its error; the reason is counted with the row's image path taken out."""
    from vlmkit.cli_errors import one_line

    message = one_line(str(error))
    reason = message
    for image in row["image"] if isinstance(row["image"], list) else [row["image"]]:
        reason = reason.replace(str(image), "<image>")
    failed[reason] += 1
    return {"id": row["id"], "image": row["image"], "task": task, "prompt": row["prompt"], "error": message}


# --------------------------------------------------------------------------------------- command line


def add_parser(sub) -> None:
    """The `vlmkit predict` subcommand (its flags and `run_predict_args`)."""
    from vlmkit.cli import MODEL_HELP, add_sampling_flags, add_task_flags

    p = sub.add_parser("predict", help="run a task over a folder of images or a manifest into a JSONL file",
                       description="Batched, resumable prediction: one JSON line per image (text, parsed boxes, "
                       "timing, prompt); rows already in --out are skipped.")
    p.add_argument("--model", help=MODEL_HELP)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="every image file directly in DIR (sorted by name)")
    src.add_argument("--data", metavar="MANIFEST", help="manifest.jsonl (rows with 'image', optional 'id' and "
                     "'prefix'), read as `vlmkit eval` reads it")
    p.add_argument("--out", required=True, help="JSONL output; an existing one is resumed (its rows skipped)")
    p.add_argument("--prompt", type=T.text, help="the prompt for --task raw (default with --data: each row's prefix)")
    add_task_flags(p)
    add_sampling_flags(p)
    p.add_argument("--batch-size", type=T.positive_int, default=8, help="rows per generation batch (default 8)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    p.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--mask-vae", help="PaliGemma mask VQ-VAE weights (.npz): segment masks get their area")
    p.add_argument("--force", action="store_true", help="replace --out instead of resuming it")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    p.set_defaults(func=run_predict_args)


def run_predict_args(args: argparse.Namespace) -> int:
    """`vlmkit predict` for parsed `args`: rows and output checked before the model loads."""
    from vlmkit.cli import sampling_flags, task_flags
    from vlmkit.outputs import check_output_file
    from vlmkit.pipeline import load
    from vlmkit.tasks.run import print_bundled_notice, task_prompt

    per_row_prompt = args.task == "raw" and args.prompt is None
    if per_row_prompt and args.images:
        raise ConfigError("--prompt is required for --task raw with --images (or choose a --task)")
    if not per_row_prompt:
        task_prompt(None, args.task, **task_flags(args))  # a task missing its flags: before the model loads
    check_output_file(args.out, overwrite=True)  # a folder, or under a file: before anything runs
    if not args.force:
        read_done(Path(args.out), args.task)  # an output that cannot be resumed: before the model loads
    rows = folder_rows(args.images) if args.images else manifest_rows(args.data, per_row_prompt)
    pipe = load(args.model, dtype=args.dtype, device=args.device)
    with _ProgressBar(args.quiet) as bar:
        summary = predict(pipe, rows, args.out, task=args.task, task_args=task_flags(args),
                          batch_size=args.batch_size, sampling=sampling_flags(args), mask_vae_path=args.mask_vae,
                          force=args.force, progress=bar)
    print(summary.format())
    for reason, n in summary.failed.most_common():
        print(f"vlmkit: warning: {n} row{'s' if n > 1 else ''} failed: {reason}", file=sys.stderr)
    print_bundled_notice(pipe)
    return 0


class _ProgressBar:
    """`predict`'s progress callback as a tqdm bar on stderr; shows nothing when `quiet` or when
    stderr is not a terminal (a log file gets no carriage-return noise)."""

    def __init__(self, quiet: bool):
        self.show, self.bar = not quiet and sys.stderr.isatty(), None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False

    def __call__(self, done: int, total: int) -> None:
        if not self.show:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
