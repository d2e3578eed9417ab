"""Typed training configs and `--key.value` overrides checked against them.

A recipe (see `vlmkit.training.recipes`) is a Python function returning a `TrainConfig`; the CLI
then applies overrides such as ``--optim.lr 3e-4 --freeze.vision_tower false``. Every override is
converted with the field's annotated type and rejected with a `ConfigError` naming the key when the
key does not exist or the value does not parse, so a typo never silently trains the wrong thing.

Batch sizes are *global*: `data.batch_size` examples per optimizer step, split over ranks and
gradient-accumulation micro-batches. The same config therefore trains the same model on 1 or N
processes (see `TrainConfig.micro_batch_size`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from vlmkit.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
Strategy = Literal["auto", "none", "ddp", "fsdp"]
COMPONENTS = ("vision_tower", "projector", "decoder", "embeddings")

# Every nn.Linear of Gemma's attention and MLP (the LoRA paper's and PaliGemma's usual choice).
DEFAULT_LORA_TARGETS = (r"language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$",)


@dataclass(kw_only=True)
class ModelConfig:
    # HF folder (config.json + safetensors), a bundled model name, or a PaliGemmaConfig preset name
    # (random init, e.g. "debug").
    source: str = "debug"
    # Tokenizer folder. None: the source folder's tokenizer; for a preset, a small BPE trained on
    # the manifest's text (written to OUT/tokenizer, reused on resume).
    tokenizer: str | None = None
    tokenizer_vocab: int = 320  # pieces of that small BPE (bytes included)
    image_size: int | None = None  # new input resolution; position embeddings are interpolated
    init_std: float = 0.02  # std of the random init of a preset model


@dataclass(kw_only=True)
class DataConfig:
    manifest: str = ""  # JSONL manifest (vlmkit.data.datasets.JsonlDataset)
    eval_manifest: str | None = None
    image_root: str | None = None
    batch_size: int = 8  # global examples per optimizer step
    grad_accum: int = 1
    max_length: int | None = None  # rows with more tokens (image tokens included) are skipped
    # Token-budget batching (vlmkit.training.token_budget): each micro-batch takes the next examples
    # while their tokens (text + image tokens after the processor) stay within this budget, instead
    # of batch_size / (ranks x grad_accum) examples (batch_size then sizes only eval batches).
    max_tokens_per_batch: int | None = None
    # Most frames taken from a row's video source (a folder of frames, an animated image, a video file;
    # a row's list of frames is taken whole), as `vlmkit generate --max-frames`: spread over the clip,
    # rounded to the model's temporal patch as transformers rounds num_frames (Qwen2-VL: 2; 5 -> 4).
    video_frames: int = 16
    # Frames a second taken from a video source (None: data.video_frames spread over the clip): its
    # duration x this, at least 4, at most data.video_frames, down to the temporal patch (transformers' fps=).
    video_fps: float | None = None
    shuffle_seed: int = 0
    validate_images: bool = True
    # A bad manifest row (not a JSON object, a field of the wrong type, a missing or unreadable
    # image): "error" stops with one line naming file and line; "skip" skips and counts it.
    bad_rows: Literal["error", "skip"] = "error"
    synthetic_scenes: int = 0  # > 0 and no manifest: render this many synthetic scenes to a temp dir
    synthetic_seed: int = 0
    # > 0 (with synthetic_scenes): also render this many scenes that each show a word and give one
    # `ocr` row, appended after the main rows; more reading practice than the task mix gives.
    synthetic_ocr_scenes: int = 0
    synthetic_ocr_seed: int = 7
    # --- mixture (vlmkit.data.mixture): several weighted sources instead of `manifest`, given as a
    # JSON list [{"source": "a.jsonl", "weight": 0.7, "kind": "image-text" | "text" | "interleaved"}, ...]
    # or the path of a .json / .toml file holding one; each micro-batch comes from one source.
    mixture: str = ""


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0  # decoupled (AdamW); applied to matrices only, not norms/biases
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0  # max global L2 norm; None = no clipping


@dataclass(kw_only=True)
class FreezeConfig:
    """Components kept fixed (see `vlmkit.training.freeze`). `decoder` excludes the token embeddings
    (tied to the LM head); `language_model` is both."""

    vision_tower: bool = False
    projector: bool = False
    decoder: bool = False
    embeddings: bool = False
    language_model: bool = False
    # Top-level parts frozen by the model's own names (e.g. Idefics3's connector, LLaVA-NeXT's image_newline).
    parts: tuple[str, ...] = ()


@dataclass(kw_only=True)
class LrScaleConfig:
    """Per-component learning-rate multipliers of `optim.lr`."""

    vision_tower: float = 1.0
    projector: float = 1.0
    decoder: float = 1.0
    embeddings: float = 1.0


@dataclass(kw_only=True)
class LoraConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # regexes (re.search) on module names


@dataclass(kw_only=True)
class ParallelConfig:
    # auto: DDP when launched by torchrun with more than one process, else single process.
    strategy: Strategy = "auto"
    activation_checkpointing: bool = False
    device: str = "auto"  # auto: this rank's CUDA device if there is one, else cpu
    # DDP: let a step leave parameters without a gradient (torch's find_unused_parameters); turned
    # on by a data mixture with text-only sources, whose batches skip the vision tower.
    find_unused_parameters: bool = False


def split_batch(batch_size: int, grad_accum: int, world_size: int) -> int:
    """Global batch -> examples per forward pass on one rank; ConfigError unless it splits evenly."""
    per_step = world_size * grad_accum
    if batch_size <= 0 or grad_accum <= 0 or batch_size % per_step:
        raise ConfigError(f"data.batch_size={batch_size} does not split into {world_size} "
                          f"rank(s) x {grad_accum} accumulation step(s)")
    return batch_size // per_step


@dataclass(kw_only=True)
class TrainConfig:
    recipe: str = "custom"
    out_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    lr_scale: LrScaleConfig = field(default_factory=LrScaleConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    steps: int = 100  # optimizer steps of the whole run (sets the LR schedule)
    stop_after: int | None = None  # stop (with a checkpoint) after this step, e.g. to test resume
    precision: Precision = "fp32"  # autocast dtype; master weights stay float32
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end (when an eval manifest is set)
    eval_batches: int = 4
    ckpt_every: int = 50  # 0 = only at the end
    keep_checkpoints: int = 2
    export: bool = True  # write OUT/export as a HF folder at the end

    def micro_batch_size(self, world_size: int) -> int:
        """Examples per forward pass on one rank; ConfigError unless the batch splits evenly."""
        return split_batch(self.data.batch_size, self.data.grad_accum, world_size)

    def validate(self) -> None:
        """Raise ConfigError on values that would fail later in a less readable way."""
        check_run_fields(self)
        checks = [
            (self.lora.rank > 0 and 0.0 <= self.lora.dropout < 1.0, "lora.rank must be > 0, lora.dropout in [0, 1)"),
            (self.data.manifest or self.data.synthetic_scenes > 0 or self.data.mixture,
             "data.manifest is required (--data)"),
            (not (self.data.manifest and self.data.mixture), "data.mixture replaces --data; drop one of them"),
            (self.data.synthetic_ocr_scenes >= 0, "data.synthetic_ocr_scenes must be >= 0"),
            (not (self.data.manifest and self.data.synthetic_ocr_scenes),
             "data.synthetic_ocr_scenes adds to rendered synthetic data, not to --data; drop one of them"),
            (bool(self.model.source), "model.source is required (--model DIR_OR_PRESET)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for pattern in self.lora.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"lora.targets: {pattern!r} is not a regular expression ({e})") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- range checks

# (field, lowest value, lowest allowed too?, what it means) checked on every trainer's config by
# `check_run_fields`; fields a config lacks are skipped, None passes for Optional fields.
RUN_FIELD_RULES = (
    ("steps", 1, True, ""), ("stop_after", 1, True, ""), ("seed", 0, True, ""),
    ("log_every", 1, True, ""), ("eval_every", 0, True, " (0 = only at the end)"),
    ("ckpt_every", 0, True, " (0 = only at the end)"), ("eval_batches", 1, True, ""),
    ("keep_checkpoints", 1, True, ""), ("data.batch_size", 1, True, ""), ("data.grad_accum", 1, True, ""),
    ("data.shuffle_seed", 0, True, ""), ("data.synthetic_scenes", 0, True, ""), ("data.max_length", 1, True, ""),
    ("data.max_tokens_per_batch", 1, True, ""), ("data.video_frames", 1, True, ""),
    ("data.video_fps", 0, False, ""),
    ("optim.lr", 0, False, ""), ("optim.weight_decay", 0, True, ""), ("optim.eps", 0, False, ""),
    ("optim.warmup_steps", 0, True, ""), ("optim.grad_clip", 0, False, " (none = no clipping)"),
    ("optim.min_lr_ratio", 0, True, ""), ("lora.alpha", 0, False, ""),
)


def _field(cfg: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        cfg = getattr(cfg, name, _MISSING)
    return cfg


_MISSING = object()


def check_run_fields(cfg: Any) -> None:
    """ConfigError naming the first field of `RUN_FIELD_RULES` out of range (or not finite), then the
    fields bounded by others: warm-up <= steps, min_lr_ratio <= 1, betas in [0, 1), seeds < 2**63."""
    for key, low, inclusive, meaning in RUN_FIELD_RULES:
        value = _field(cfg, key)
        if value is _MISSING or value is None:
            continue
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            raise ConfigError(f"{key} must be {'>=' if inclusive else '>'} {low}{meaning}, got {value!r}")
    uppers = [("optim.warmup_steps", cfg.steps, "steps"), ("optim.min_lr_ratio", 1, "1"),
              ("seed", 2**63 - 1, "2**63 - 1"), ("data.shuffle_seed", 2**63 - 1, "2**63 - 1")]
    for key, high, name in uppers:
        value = _field(cfg, key)
        if value is not _MISSING and value > high:
            raise ConfigError(f"{key} must be <= {name}, got {value!r}")
    betas = _field(cfg, "optim.betas")
    if betas is not _MISSING and not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(betas)}")


# --------------------------------------------------------------------------- overrides


def _convert(value: str, tp: Any, key: str) -> Any:
    """Parse the string `value` as type `tp` (bool/int/float/str, Optional, Literal, tuple)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        try:
            items = json.loads(value) if value.lstrip().startswith("[") else [v for v in value.split(",") if v]
        except ValueError as e:
            raise ConfigError(f"--{key}: {value!r} is not a valid JSON list ({e.msg} at character {e.pos})") from None
        if not isinstance(items, list):
            raise ConfigError(f"--{key}: {value!r} is not a list")
        inner = args[:1] * len(items) if len(args) == 2 and args[1] is Ellipsis else args
        if len(inner) != len(items):
            raise ConfigError(f"{key} needs {len(inner)} comma-separated values, got {value!r}")
        return tuple(_convert(str(v), t, key) for v, t in zip(items, inner))
    if tp is bool:
        lowered = value.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return lowered in ("true", "1", "yes")
    if tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}") from None
    if tp is str:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _set(cfg: Any, path: list[str], value: str, full: str) -> Any:
    """Copy of dataclass `cfg` with the field at `path` set from the string `value`."""
    hints = typing.get_type_hints(type(cfg))
    name = path[0]
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(hints)}"
        raise ConfigError(f"unknown config key {full!r}{hint}")
    current = getattr(cfg, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ConfigError(f"{full!r} is a group; set one of its fields, e.g. {full}.{next(iter(typing.get_type_hints(type(current))))}")
        return dataclasses.replace(cfg, **{name: _set(current, path[1:], value, full)})
    if len(path) > 1:
        raise ConfigError(f"unknown config key {full!r} ({'.'.join(full.split('.')[:-len(path) + 1])} is not a group)")
    return dataclasses.replace(cfg, **{name: _convert(value, hints[name], full)})


def apply_overrides(cfg: TrainConfig, overrides: dict[str, str] | list[str]) -> TrainConfig:
    """Return `cfg` with dotted overrides applied: {"optim.lr": "1e-3"} or ["optim.lr=1e-3"].

    Raises:
        ConfigError: unknown key (with the closest known one) or a value of the wrong type.
    """
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} is not KEY=VALUE")
            pairs[key] = value
        overrides = pairs
    for key, value in overrides.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of `TrainConfig.to_dict` (used to read the config saved beside a run)."""
    def build(cls, values: dict):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in values.items():
            if k not in hints:
                raise ConfigError(f"saved config has unknown key {k!r}")
            f = hints[k]
            if dataclasses.is_dataclass(f):
                v = build(f, v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        return cls(**kwargs)

    return build(TrainConfig, d)
