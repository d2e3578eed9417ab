"""Training recipes (functions returning a `TrainConfig`) and `run`, which executes one.

    finetune     task transfer, frozen image encoder            (recipes/finetune.py)
    multimodal   PaLI-3 stage 1, frozen image encoder          (recipes/multimodal.py)
    resolution   PaLI-3 stage 2, higher resolution, all trained (recipes/resolution.py)
    shapes_tiny  the bundled vlmkit-shapes-tiny, from scratch    (recipes/shapes_tiny.py)

Each takes `smoke=True` for a seconds-long CPU run on the debug preset with synthetic data
rendered into a temp dir (`data.synthetic_scenes`), which the tests run end to end.

`run(cfg)` builds everything from the config, in this order: process group -> the lock of
`out_dir` (a second run into it stops; an interrupted run's temp folders are removed; see
`vlmkit.training.outdir`) -> data (manifest or synthetic) -> tokenizer -> model (HF folder of
any `vlm` family or a PaliGemma preset; resolution change; LoRA; freezing) -> how rows become
batches, by the family record's `train_format` (PaliGemma's prefix/suffix processor, or chat rows
through the family's processor and chat template, `vlmkit.training.chat`) -> rank-split resumable
batch stream -> `Trainer` (DDP/FSDP applied there) -> optional resume from the latest checkpoint
-> fit -> export (a folder of the same family).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from vlmkit.data.chat_template import load_chat_template
from vlmkit.data.datasets import JsonlDataset, ShuffledStream, TarShardDataset, is_shard_source
from vlmkit.data.mixture import parse_mixture
from vlmkit.data.processor import PaliGemmaProcessor
from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma.config import PRESETS, PaliGemmaConfig
from vlmkit.models.paligemma.model import PaliGemma
from vlmkit.models.registry import family_of, get_family
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.chat import ChatCollator, ChatJsonlDataset
from vlmkit.training.collate import build_small_tokenizer, manifest_texts
from vlmkit.training.config import TrainConfig
from vlmkit.training.freeze import apply_freeze, trainable_parts
from vlmkit.training.mixture import mixture_batches, mixture_texts
from vlmkit.training.lora import apply_lora, merge_lora, save_lora
from vlmkit.training.outdir import locked_run, reuse_built_tokenizer, trim_metrics
from vlmkit.training.parallelize import DistInfo, barrier, init_distributed
from vlmkit.training.recipes.finetune import finetune
from vlmkit.training.recipes.multimodal import multimodal
from vlmkit.training.recipes.resolution import raise_resolution, resolution
from vlmkit.training.recipes.shapes_tiny import shapes_tiny, synth_world
from vlmkit.training.token_budget import make_batches
from vlmkit.training.trainer import Hook, Trainer, TrainResult
from vlmkit.weights.create import TOKENIZER_FILES
from vlmkit.weights.hf import load_hf, read_config, save_hf
from vlmkit.weights.registry import bundled_models

log = logging.getLogger(__name__)

RECIPES: dict[str, Callable[..., TrainConfig]] = {
    "finetune": finetune, "multimodal": multimodal, "resolution": resolution, "shapes_tiny": shapes_tiny,
}
# Recipes that render their own synthetic world (seed -> SynthConfig) when no manifest is given;
# every other recipe gets `vlmkit data synth`'s defaults.
SYNTH_WORLDS: dict[str, Callable[[int], SynthConfig]] = {"shapes_tiny": synth_world}
# A chat family's processor files, copied from the source folder into the export beside the tokenizer's.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")

__all__ = ["RECIPES", "get_recipe", "run", "raise_resolution", "finetune", "multimodal", "resolution",
           "shapes_tiny"]


def get_recipe(name: str, smoke: bool = False) -> TrainConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name](smoke=smoke)


@contextlib.contextmanager
def _data(cfg: TrainConfig, info: DistInfo):
    """Yield (train manifest, eval manifest or None); renders synthetic data into a temp dir
    (same bytes on every rank and every resume, see `write_dataset`) when no manifest is set."""
    if cfg.data.manifest or cfg.data.mixture:
        if cfg.data.mixture:  # checked before the model is built: a bad source fails in one line, early
            parse_mixture(cfg.data.mixture)
        yield cfg.data.manifest, cfg.data.eval_manifest
        return
    with tempfile.TemporaryDirectory(prefix="vlmkit-synth-") as tmp:
        n, seed = cfg.data.synthetic_scenes, cfg.data.synthetic_seed
        world = SYNTH_WORLDS.get(cfg.recipe, lambda s: SynthConfig(seed=s))
        train = write_dataset(Path(tmp) / "train", n, world(seed))
        if cfg.data.synthetic_ocr_scenes > 0:
            reading = replace(world(cfg.data.synthetic_ocr_seed), word_prob=1.0, examples_per_scene=1,
                              task_weights={"ocr": 1.0})  # fmt: skip
            extra = write_dataset(Path(tmp) / "ocr", cfg.data.synthetic_ocr_scenes, reading)
            train = _concat_manifests([train, extra], Path(tmp) / "train_ocr.jsonl")
        # Only the first eval_batches batches are read; cap the render at what could be used.
        n_eval = min(max(n // 4, 2), 4096)
        held_out = write_dataset(Path(tmp) / "eval", n_eval, world(seed + 1))
        yield str(train), cfg.data.eval_manifest or str(held_out)


def _concat_manifests(manifests: list[Path], out: Path) -> str:
    """One manifest with the rows of `manifests` in order, image paths made absolute."""
    with open(out, "w", encoding="utf-8") as f:
        for manifest in manifests:
            for line in manifest.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                row["image"] = str(manifest.parent / row["image"])
                f.write(json.dumps(row) + "\n")
    return str(out)


def _source_folder(source: str) -> Path | None:
    """The checkpoint folder `source` names (path or bundled model), or None for a preset."""
    if Path(source).is_dir():
        return Path(source)
    if source in bundled_models():
        return bundled_models()[source]
    if source in PRESETS:
        return None
    raise CheckpointError(f"--model {source!r} is not a folder, a bundled model or a preset "
                          f"({', '.join(sorted(PRESETS))})")


def _tokenizer_dir(cfg: TrainConfig, folder: Path | None, manifest: str, info: DistInfo) -> Path:
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    if folder is not None:
        return folder
    out = Path(cfg.out_dir) / "tokenizer"
    if info.is_main and not reuse_built_tokenizer(Path(cfg.out_dir)):  # reused only on resume
        texts = mixture_texts(cfg.data.mixture) if cfg.data.mixture else manifest_texts(manifest)
        build_small_tokenizer(texts, out, cfg.model.tokenizer_vocab)
    barrier()
    return out


def build_model(cfg: TrainConfig, folder: Path | None, tok: Tokenizer) -> nn.Module:
    """float32 model of any `vlm` family from a folder, or a randomly initialised PaliGemma preset
    (vocabulary and special ids taken from the tokenizer), at `model.image_size` (PaliGemma), with
    LoRA and freezing applied."""
    if folder is None:
        family = get_family("paligemma")  # the presets `--model` names are PaliGemma's
        base = PaliGemmaConfig.from_preset(cfg.model.source)
        model = init_weights(PaliGemma(family.with_tokenizer(base, tok)), std=cfg.model.init_std, seed=cfg.seed)
    else:
        family = read_config(folder)[1]
        if family.kind != "vlm":
            raise CheckpointError(f"{folder} holds a {family.name} model; the PaliGemma recipes train paligemma "
                                  f"and the other vlm families' checkpoints, not {family.kind} ones")
        model = load_hf(folder, dtype="float32")
        _check_tokenizer(folder, tok, model.cfg, family.train_format == "prefix_lm")
    if cfg.model.image_size and cfg.model.image_size != model.cfg.vision.image_size:
        if family.train_format != "prefix_lm":
            raise ConfigError(f"model.image_size: changing the resolution is implemented for PaliGemma, "
                              f"not {family.name}")
        model = raise_resolution(model, cfg.model.image_size)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    else:
        apply_freeze(model, cfg.freeze)
    return model.float().train()


def _check_tokenizer(folder: Path, tok: Tokenizer, model_cfg, image_token: bool) -> None:
    """The tokenizer must fit the model's vocabulary (and, for PaliGemma, its <image> id; a chat
    family's processor builder checks its own image tokens)."""
    fits = tok.vocab_size <= model_cfg.text.vocab_size
    if not fits or (image_token and tok.image_token_id != model_cfg.image_token_id):
        image = f", <image>={tok.image_token_id}" if image_token else ""
        raise CheckpointError(f"tokenizer ({tok.vocab_size} ids{image}) does not fit the model in {folder} "
                              f"(vocab {model_cfg.text.vocab_size}, <image>={model_cfg.image_token_id})")


def _token_length(tok: Tokenizer, num_image_tokens: int) -> Callable[[dict], int]:
    """Exact sequence length of a manifest row (image tokens, <bos>, prompt + "\\n", suffix, <eos>)."""
    def length(row: dict) -> int:
        n_images = len(row["image"]) if isinstance(row["image"], list) else 1
        return (num_image_tokens * n_images + 1 + len(tok.encode(row["prefix"] + "\n"))
                + len(tok.encode(row["suffix"])) + 1)
    return length


@dataclass(frozen=True)
class _Inputs:
    """How rows become batches for one model: `dataset(manifest, train)`, then `BatchStream`'s
    arguments: PaliGemma's processor (for the prefix/suffix `collate`) or a `collate(samples)`."""

    dataset: Callable[[str, bool], object]
    processor: PaliGemmaProcessor | None
    collate: Callable[[list[dict]], dict] | None
    files: dict[str, Path]  # files written beside the exported weights


def _prefix_lm_inputs(cfg: TrainConfig, model: nn.Module, tok: Tokenizer, tok_dir: Path, folder) -> _Inputs:
    """PaliGemma: prefix/suffix rows through `PaliGemmaProcessor` (token_type_ids for the prefix-LM)."""
    n_img = model.cfg.num_image_tokens
    processor = PaliGemmaProcessor(tok, model.cfg.vision.image_size, n_img, max_length=cfg.data.max_length)
    length = _token_length(tok, n_img)

    def dataset(manifest: str, train: bool):
        if train:
            return _train_dataset(cfg, manifest, length)
        return JsonlDataset(manifest, None, cfg.data.validate_images, max_len=cfg.data.max_length,
                            length_fn=length, bad_rows=cfg.data.bad_rows)

    files = {n: tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()}
    return _Inputs(dataset, processor, None, files)


def _chat_inputs(cfg: TrainConfig, model: nn.Module, tok: Tokenizer, tok_dir: Path, folder: Path) -> _Inputs:
    """Other `vlm` families: chat (or prefix/suffix) rows rendered with the folder's chat template
    through the family's processor, loss on assistant tokens (`vlmkit.training.chat`)."""
    processor = family_of(model).build_processor(folder, tok, model.cfg)
    collator = ChatCollator(processor, load_chat_template(tok_dir))

    def dataset(manifest: str, train: bool):
        if is_shard_source(manifest):
            raise ConfigError(f"{manifest}: {family_of(model).name} models train from JSONL manifests, not tar shards")
        return ChatJsonlDataset(manifest, cfg.data.image_root if train else None, cfg.data.validate_images,
                                max_len=cfg.data.max_length, collator=collator, bad_rows=cfg.data.bad_rows,
                                budget=cfg.data.max_tokens_per_batch if train else None,
                                video_frames=cfg.data.video_frames, video_fps=cfg.data.video_fps)

    names = (*TOKENIZER_FILES, *PROCESSOR_FILES)
    return _Inputs(dataset, None, collator, {n: folder / n for n in names if (folder / n).is_file()})


def _exporter(cfg: TrainConfig, model_cfg, files: dict[str, Path]) -> Callable[[dict], Path]:
    """export_fn for the Trainer: full state -> OUT/export (HF folder of the same family, LoRA
    merged, tokenizer / processor files and preprocessor_config.json beside it) and
    OUT/lora_adapters.safetensors when LoRA is on."""
    out = Path(cfg.out_dir)
    family = family_of(model_cfg)

    def export(state: dict[str, torch.Tensor]) -> Path:
        with torch.device("meta"):
            model = family.model_class(model_cfg)
            if cfg.lora.enabled:
                apply_lora(model, cfg.lora)
        model.load_state_dict(state, strict=True, assign=True)
        if cfg.lora.enabled:
            save_lora(model, out / "lora_adapters.safetensors", cfg.lora)
            merge_lora(model)
        extra = dict(files)
        with tempfile.TemporaryDirectory() as tmp:
            if "preprocessor_config.json" not in extra and family.preprocessor_config is not None:
                pre = Path(tmp) / "preprocessor_config.json"
                pre.write_text(json.dumps(family.preprocessor_config(model_cfg), indent=2))
                extra["preprocessor_config.json"] = pre
            return save_hf(model, out / "export", extra_files=extra)

    return export


@locked_run
def run(cfg: TrainConfig, *, resume: bool = False, hooks: list[Hook] = ()) -> TrainResult:
    """Train per `cfg` (see module docstring); under torchrun every rank calls this. `cfg.out_dir`
    is locked for the run (a second run into it stops; see `vlmkit.training.outdir`)."""
    info = init_distributed(cfg.parallel)
    with _data(cfg, info) as (manifest, eval_manifest):
        folder = _source_folder(cfg.model.source)
        tok_dir = _tokenizer_dir(cfg, folder, manifest, info)
        tok = Tokenizer.from_folder(tok_dir)
        torch.manual_seed(cfg.seed)  # identical initialisation (LoRA included) on every rank
        model = build_model(cfg, folder, tok)
        prefix_lm = family_of(model).train_format == "prefix_lm"
        inputs = (_prefix_lm_inputs if prefix_lm else _chat_inputs)(cfg, model, tok, tok_dir, folder)
        if cfg.data.mixture:  # several weighted sources, one per micro-batch (vlmkit.training.mixture)
            dataset = batches = mixture_batches(cfg, inputs, tok, info, prefix_lm)
            if batches.imageless:  # their batches skip the vision tower: DDP must allow unused parameters
                cfg = replace(cfg, parallel=replace(cfg.parallel, find_unused_parameters=True))
        else:
            dataset = inputs.dataset(manifest, True)
            if dataset.skipped and info.is_main:
                print(f"data: skipped {sum(dataset.skipped.values())} bad rows of {manifest} "
                      f"({', '.join(f'{k}={v}' for k, v in sorted(dataset.skipped.items()))})", flush=True)
            stream = ShuffledStream(dataset, seed=cfg.data.shuffle_seed, rank=info.rank, world_size=info.world_size,
                                    equal_split=True)
            batches = make_batches(stream, inputs.processor, cfg.micro_batch_size(info.world_size),
                                   inputs.collate, cfg.data.max_tokens_per_batch)
        eval_data = (inputs.dataset(eval_manifest, False), batches.collate) if eval_manifest else None
        torch.manual_seed(cfg.seed + info.rank)  # dropout differs per rank; init above is shared
        trainer = Trainer(cfg, model, batches, info, eval_data=eval_data, hooks=hooks,
                          export_fn=_exporter(cfg, model.cfg, inputs.files))
        _start(trainer, cfg, info, resume, dataset)
        return trainer.fit()


def _train_dataset(cfg: TrainConfig, manifest: str, length: Callable[[dict], int]):
    """A JSONL manifest (validated up front, too-long rows skipped) or webdataset-style tar shards
    (streamed; a folder of .tar files, a .tar or a glob), shuffled with a buffer."""
    if is_shard_source(manifest):
        return TarShardDataset(manifest)
    return JsonlDataset(manifest, cfg.data.image_root, cfg.data.validate_images, max_len=cfg.data.max_length,
                        length_fn=length, bad_rows=cfg.data.bad_rows, budget=cfg.data.max_tokens_per_batch)


def _start(trainer: Trainer, cfg: TrainConfig, info: DistInfo, resume: bool, dataset) -> None:
    out = Path(cfg.out_dir)
    found = latest_checkpoint(out / "checkpoints")
    if found is not None and not resume:
        raise ConfigError(f"{out} already has checkpoints ({found.name}); pass --resume or a new --out")
    if resume and found is not None:
        trainer.load_checkpoint(found)
        if info.is_main:
            print(f"resumed from {found} at step {trainer.step}", flush=True)
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trim_metrics(trainer.logger.path, 0, 0)  # rows of an earlier attempt that left no checkpoint
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        size = f"{len(dataset)} examples" if hasattr(dataset, "__len__") else "streamed tar shards"
        parts = ", ".join(f"{part} {n:,}" for part, n in trainable_parts(trainer.model).items())
        print(f"{cfg.recipe}: {size}, {n_train:,} trainable parameters ({parts}), {cfg.steps} steps, "
              f"strategy={info.strategy} x{info.world_size}", flush=True)
