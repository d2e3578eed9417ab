"""`vlmkit train`: a thin command line over the recipes and `recipes.run`.

    vlmkit train RECIPE --data MANIFEST --model DIR_OR_PRESET --out DIR [--resume] [--smoke]
                 [--key.value VALUE ...]

Any other ``--key VALUE`` / ``--key=VALUE`` is an override of the recipe's `TrainConfig`
(e.g. ``--optim.lr 3e-4 --freeze.vision_tower false --steps 200``), type-checked against the
dataclass; a flag with no value sets a boolean to true (``--lora.enabled``). Run it under
``torchrun --nproc-per-node N`` for DDP (default) or ``--parallel.strategy fsdp``.
"""

from __future__ import annotations

import argparse
import sys

from vlmkit.errors import ConfigError, VlmkitError
from vlmkit.training.config import TrainConfig, apply_overrides


# Generic help of the flags every trainer takes; a trainer may reword some (`add_run_arguments`).
RUN_FLAG_HELP = {
    "recipe": "training recipe",
    "data": "training manifest (JSONL); optional with --smoke",
    "eval_data": "held-out manifest for the evaluation loss",
    "model": "HF checkpoint folder, bundled model or preset name (e.g. debug)",
    "tokenizer": "tokenizer folder (default: the model folder's)",
    "out": "run folder: metrics, checkpoints, export (default runs/RECIPE)",
    "resume": "continue from the latest checkpoint in --out",
    "smoke": "tiny CPU run: debug preset, synthetic data",
    "force": "use a non-empty --out that holds no training run (files of the same name are replaced, "
             "others kept); never restarts a run that has checkpoints (use --resume or a new --out)",
}


def add_run_arguments(parser: argparse.ArgumentParser, recipes, **help_text: str) -> argparse.ArgumentParser:
    """Add the flags shared by every trainer (recipe, --data, --eval-data, --model, --tokenizer,
    --out, --resume, --smoke, --force) to `parser`; `help_text` rewords some, keyed by their dest name."""
    helps = RUN_FLAG_HELP | help_text
    parser.add_argument("recipe", choices=sorted(recipes), help=helps["recipe"])
    for dest in ("data", "eval_data", "model", "tokenizer", "out"):
        parser.add_argument("--" + dest.replace("_", "-"), help=helps[dest])
    for dest in ("resume", "smoke", "force"):
        parser.add_argument("--" + dest, action="store_true", help=helps[dest])
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `train` arguments to `parser` (the main CLI's `train` sub-parser)."""
    from vlmkit.training.recipes import RECIPES

    return add_run_arguments(parser, RECIPES)


def parse_overrides(extra: list[str]) -> dict[str, str]:
    """["--optim.lr", "1e-3", "--lora.enabled", "--steps=5"] -> {"optim.lr": "1e-3", ...}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or len(item) == 2:
            raise ConfigError(f"unexpected argument {item!r}; overrides look like --key.value VALUE")
        key, sep, value = item[2:].partition("=")
        if not sep:
            has_value = i + 1 < len(extra) and not extra[i + 1].startswith("--")
            value = extra[i + 1] if has_value else "true"
            i += has_value
        out[key.replace("-", "_")] = value
        i += 1
    return out


def config_from_args(args: argparse.Namespace, extra: list[str]) -> TrainConfig:
    """The recipe's config with the named flags and then the overrides applied."""
    from vlmkit.training.recipes import get_recipe

    cfg = apply_args(get_recipe(args.recipe, smoke=args.smoke), args, extra)
    _check_lora_freeze(cfg, parse_overrides(extra))
    return cfg


def _check_lora_freeze(cfg: TrainConfig, overrides: dict[str, str]) -> None:
    """LoRA freezes every base weight and trains only its adapters, so a `--freeze.*` flag next to
    `--lora.enabled` would be silently ignored: refuse it in one line instead."""
    freeze = sorted(k for k in overrides if k.startswith("freeze."))
    if cfg.lora.enabled and freeze:
        raise ConfigError(f"--{freeze[0]} has no effect with --lora.enabled: LoRA trains only the adapters on "
                          "lora.targets and freezes every other weight; drop one of the two")


def apply_args(cfg, args: argparse.Namespace, extra: list[str]):
    """Apply the named flags shared by every trainer (--data, --eval-data, --model, --tokenizer,
    --out), then the free-form `--key.value` overrides, to a recipe's config dataclass."""
    named = {"data.manifest": args.data, "data.eval_manifest": args.eval_data, "model.source": args.model,
             "model.tokenizer": args.tokenizer, "out_dir": args.out or f"runs/{args.recipe}"}
    cfg = apply_overrides(cfg, {k: v for k, v in named.items() if v is not None})
    return apply_overrides(cfg, parse_overrides(extra))


def run_parsed(make_config, run_fn, args: argparse.Namespace, extra: list[str] | None) -> int:
    """`run_fn(make_config(args, overrides), resume=args.resume, force=args.force)` for a parsed
    command; `extra` are the unparsed `--key.value` overrides (or `args.overrides`). Returns the
    exit code: 0, or 2 after printing a one-line error."""
    from vlmkit.training.parallelize import shutdown_distributed

    try:
        cfg = make_config(args, extra if extra is not None else getattr(args, "overrides", []) or [])
        result = run_fn(cfg, resume=args.resume, force=args.force)
    except VlmkitError as e:  # the same one line as `vlmkit.cli.main` prints
        print(f"vlmkit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    if result.export is not None:
        print(f"exported {result.export}")
    return 0


def run_train_args(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    """Run a parsed `train` command (see `run_parsed`)."""
    from vlmkit.training.recipes import run

    return run_parsed(config_from_args, run, args, extra)


def run_train(argv: list[str]) -> int:
    """`vlmkit train ...` with `argv` the arguments after `train`."""
    parser = add_train_arguments(argparse.ArgumentParser(prog="vlmkit train", description=__doc__.split("\n")[0],
                                                          allow_abbrev=False))
    args, extra = parser.parse_known_args(argv)
    return run_train_args(args, extra)


if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:]))
