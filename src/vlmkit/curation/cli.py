"""`vlmkit data curate IN OUT [--config curate.toml] [--only RULE] [--quiet]`."""

from __future__ import annotations

import sys


def add_parser(dsub) -> None:
    """Add the `curate` sub-command to `vlmkit data`'s sub-parsers."""
    p = dsub.add_parser("curate", help="filter, deduplicate and balance a manifest or tar shards",
                        description="Stream IN (a JSONL manifest or tar shards) through the curation "
                        "rules of --config and write the kept rows, report.json and report.html to OUT. "
                        "Rerunning with the same IN and config resumes an interrupted run.")  # fmt: skip
    p.add_argument("input", metavar="IN", help="JSONL manifest, or a .tar / folder / glob of tar shards")
    p.add_argument("out", metavar="OUT", help="output folder (absent, empty, or holding this run)")
    p.add_argument("--config", default=None, help="curate TOML ([run] + [rules.NAME] tables); "
                   "default: the rules that need no model")  # fmt: skip
    p.add_argument("--only", default=None, metavar="RULE", help="run only this rule (its table in --config, "
                   "or its defaults)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is off anyway when stderr is not a TTY)")
    p.add_argument("--engine", choices=("default", "ray"), default="default",
                   help="ray: score on a Ray cluster (RAY_ADDRESS, or a local one), decide globally")
    p.add_argument("--shard", default=None, metavar="I/N", help="job I (from 0) of N: tar files j or "
                   "manifest rows r with j %% N == I (r %% N == I); merge with `vlmkit data curate-merge`")  # fmt: skip
    p.set_defaults(func=cmd_curate)
    from vlmkit.curation.merge import add_parser as add_merge

    add_merge(dsub)


def cmd_curate(args) -> int:
    from vlmkit.curation.config import load_config
    from vlmkit.curation.engine import curate

    config = load_config(args.config, args.only)
    progress = not args.quiet and sys.stderr.isatty()
    if args.engine == "ray" or args.shard is not None:
        from vlmkit.curation.shard import run_scaled

        report = run_scaled(args.input, args.out, config, args.engine, args.shard)
    else:
        report = curate(args.input, args.out, config, progress=progress)
    removed = ", ".join(f"{k}={v}" for k, v in report["removed_by"].items())
    unreadable = sum(report["unreadable"].values())
    print(f"kept {report['rows_out']} of {report['rows_in']} rows ({removed}; unreadable {unreadable}) -> {args.out}")
    return 0
