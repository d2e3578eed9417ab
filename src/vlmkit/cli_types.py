"""Flag values checked at parse time: argparse `type=` functions and a parser that errs in one line.

A bad value stops the command before any model is loaded, as one line
`vlmkit: error: generate: argument --temperature: must be a finite number >= 0, got 'nan'`.
"""

from __future__ import annotations

import argparse
import math

from vlmkit.errors import ConfigError

GREEDY_BELOW = 1e-5  # temperatures under this (denormals included) decode greedily, see `temperature`
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1
IMAGE_SIZE_RANGE = (16, 4096)
FORCE_HELP = "write into a non-empty folder: same-named files are replaced, others kept"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a `ConfigError` (one line, exit 2 at the CLI boundary)
    instead of a usage block; `--help` still prints the full usage."""

    def error(self, message: str):
        where = self.prog.removeprefix("vlmkit").strip()
        raise ConfigError(f"{where + ': ' if where else ''}{message} (see `{self.prog} --help`)")


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (token budgets, frame counts, strides, scene counts)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def temperature(text: str) -> float:
    """A finite temperature >= 0. 0 is greedy (argmax); so is anything below GREEDY_BELOW, whose
    logits / t would overflow to inf (denormals) or sample the argmax anyway."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = greedy), got {text!r}")
    return 0.0 if value < GREEDY_BELOW else value


def top_p(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def top_k(text: str) -> int | None:
    """k >= 0; 0 means no top-k filtering (as in transformers)."""
    return non_negative_int(text) or None


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64 - 1], got {value}")
    return value


def image_size(text: str) -> int:
    value = _number(text, int)
    low, high = IMAGE_SIZE_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be in [{low}, {high}] pixels, got {value}")
    return value


def text(value: str) -> str:
    """Prompt-like text: must be valid UTF-8 (bad bytes in argv arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise argparse.ArgumentTypeError(f"is not valid UTF-8 text (bad byte at position {e.start})") from None
    return value


def device(value: str) -> str:
    """`cpu`, `cuda`, `cuda:N` or `mps`, only if this machine has it."""
    import torch

    kind, _, index = value.partition(":")
    if kind == "cpu" and not index:
        return value
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: CUDA is not available on this machine (use cpu)")
        count = torch.cuda.device_count()
        if index and not (index.isdigit() and int(index) < count):
            raise argparse.ArgumentTypeError(f"{value!r}: this machine has {count} CUDA device(s), "
                                             f"cuda:0 .. cuda:{count - 1}")
        return value
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: MPS is not available on this machine (use cpu)")
        return value
    raise argparse.ArgumentTypeError(f"unknown device {value!r}; use cpu, cuda, cuda:N or mps")


QUANTIZE_CHOICES = ("int8", "int8-dyn", "int4")
GROUP_SIZE_CHOICES = (32, 64, 128)


def add_speed_flags(p: argparse.ArgumentParser, compile_flag: bool = True) -> None:
    """`--prepack`, `--quantize`, `--group-size` (and `--compile`) for commands that load a model
    to generate; their values go to `Pipeline.load` as `speed_kwargs(args)`. One definition shared
    by generate, serve and predict."""
    if compile_flag:
        p.add_argument("--compile", action="store_true",
                       help="compile the decode step with torch.compile (first call slower; falls back to "
                            "eager with one warning line where compiling is unavailable)")
        p.add_argument("--compile-mode", choices=("default", "max-autotune"),
                       help="torch.compile mode of --compile (implies it); max-autotune on CPU freezes the "
                            "weights and autotunes inductor's C++ GEMM kernels for the int8/int4 matmuls "
                            "(the first call takes minutes)")
    p.add_argument("--prepack", action="store_true",
                   help="CPU: store the decoder's bf16 projections in oneDNN's blocked layout where that "
                        "gives bit-identical outputs (checked per shape while loading, seconds), and run "
                        "--quantize int8-dyn layers through vlmkit's int8 kernel (built once, ~30 s; oneDNN's "
                        "int8 layout where it does not build); faster decode, no more memory (int8-dyn: "
                        "W8A8 at every batch size); with compiling only as --compile-mode max-autotune")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                   help="quantisation of the decoder: int8 (weight-only, per channel), int8-dyn (int8 "
                        "weights and activations: fastest CPU decode at batch > 1) or int4 (weight-only, "
                        "group-wise); less memory and faster decoding on CPU, slightly different logits")
    p.add_argument("--group-size", type=int, choices=GROUP_SIZE_CHOICES,
                   help="input features per int4 scale and zero (default 64; needs --quantize int4)")


def speed_kwargs(args: argparse.Namespace) -> dict:
    """The `Pipeline.load` keyword arguments of `add_speed_flags`' flags (checked there)."""
    if args.group_size is not None and args.quantize != "int4":
        raise ConfigError("--group-size applies to --quantize int4 only")
    compile = getattr(args, "compile_mode", None) or getattr(args, "compile", False)
    return {"compile": compile, "quantize": args.quantize, "group_size": args.group_size,
            "prepack": getattr(args, "prepack", False)}
