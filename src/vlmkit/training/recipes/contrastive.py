"""Contrastive and CoCa recipes, their data and `run_contrastive`, which executes one.

    siglip   SigLIP two-tower, pairwise sigmoid loss (arXiv:2303.15343)
    siglip2  SigLIP 2 NaFlex two-tower (arXiv:2502.14786): the sigmoid loss on images at their own
             aspect ratio, resized per sample and packed per batch (no padding)
    clip     the same towers with CLIP's softmax InfoNCE and temperature init (arXiv:2103.00020)
    coca     CoCa, contrastive + captioning losses (arXiv:2205.01917)

These return a `ContrastiveTrainConfig`, not a `TrainConfig`, and need image-caption pairs rather
than PaLI prefix/suffix rows, so they have their own entry point instead of `recipes.RECIPES`:

    python -m vlmkit.training.recipes.contrastive siglip --smoke --out runs/siglip
    torchrun --nproc-per-node 4 -m vlmkit.training.recipes.contrastive coca --data pairs.jsonl ...

Data: a JSONL manifest of ``{"image": path, "caption": text}`` rows (``text`` or ``suffix`` are
accepted for the caption), or, with ``data.synthetic_scenes``, captioned synthetic scenes (1-3
coloured shapes, "a red circle and a blue square") rendered in memory. `smoke=True` gives a
seconds-long CPU run on the debug presets that trains, checkpoints, resumes and evaluates
image<->text retrieval on held-out scenes. ``--itm.weight W`` (> 0) also trains an image-text
matching head (`vlmkit.training.itm_head`), exported beside the weights for the `itm_score` rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.processors.two_tower import (PREPROCESSOR_NAME, ImageSide, TwoTowerProcessor, image_config,
                                              image_processor)
from vlmkit.data.synth import SynthConfig, generate_scene
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, ConfigError, DataError
from vlmkit.eval.retrieval import retrieval_recall_from_embeddings
from vlmkit.models.common.init import init_weights
from vlmkit.models.registry import family_of, get_family
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import OptimConfig
from vlmkit.training.contrastive import (ContrastiveDataConfig, ContrastiveModelConfig, ContrastiveTrainConfig,
                                         ContrastiveTrainer, PairBatches, text_vocab_size)
from vlmkit.training.itm_head import ITM_FILES, head_config, write_itm_head
from vlmkit.training.outdir import locked_run, reuse_built_tokenizer
from vlmkit.training.parallelize import DistInfo, barrier, init_distributed
from vlmkit.training.trainer import Hook, TrainResult
from vlmkit.weights.create import TOKENIZER_FILES
from vlmkit.weights.hf import load_hf, read_config, save_hf
from vlmkit.weights.registry import find_model

# --------------------------------------------------------------------------- recipes


def _smoke(cfg: ContrastiveTrainConfig, source: str) -> ContrastiveTrainConfig:
    cfg.model.source = source
    cfg.data = ContrastiveDataConfig(batch_size=8, grad_accum=1, synthetic_scenes=64)
    cfg.optim = OptimConfig(lr=2e-3, weight_decay=0.1, warmup_steps=2)
    cfg.steps, cfg.precision, cfg.ckpt_every, cfg.log_every = 6, "fp32", 3, 1
    return cfg


def siglip(*, smoke: bool = False) -> ContrastiveTrainConfig:
    """SigLIP B/16-style pretraining (sigmoid loss, t' = log 10, b = -10); needs --data."""
    cfg = ContrastiveTrainConfig(
        recipe="siglip", model=ContrastiveModelConfig(family="siglip", source="base-patch16-224"),
        data=ContrastiveDataConfig(batch_size=1024), steps=20_000, precision="bf16", ckpt_every=1000,
        # SigLIP's paper: lr 1e-3, weight decay 1e-4, warm-up, cosine.
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=2000),
    )
    return _smoke(cfg, "debug") if smoke else cfg


def siglip2(*, smoke: bool = False) -> ContrastiveTrainConfig:
    """SigLIP 2 NaFlex B/16 (sigmoid loss; the SigLIP recipe's optimiser); needs --data. The
    paper's decoder, self-distillation and masked-prediction losses are not part of it."""
    cfg = siglip(smoke=smoke)
    cfg.recipe, cfg.model.family = "siglip2", "siglip2"
    cfg.model.source = "debug" if smoke else "siglip2-base-patch16-naflex"
    return cfg


def clip(*, smoke: bool = False) -> ContrastiveTrainConfig:
    """CLIP-style two-tower (softmax InfoNCE, t' = log(1/0.07), no bias); needs --data."""
    cfg = siglip(smoke=smoke)
    cfg.recipe, cfg.model.contrastive_loss = "clip", "softmax"
    cfg.optim.weight_decay = 0.1 if smoke else 0.2  # CLIP's 0.2
    return cfg


def coca(*, smoke: bool = False) -> ContrastiveTrainConfig:
    """CoCa (contrastive weight 1, captioning weight 2, the paper's); needs --data."""
    cfg = ContrastiveTrainConfig(
        recipe="coca", model=ContrastiveModelConfig(family="coca", source="small"),
        data=ContrastiveDataConfig(batch_size=512), steps=20_000, precision="bf16", ckpt_every=1000,
        optim=OptimConfig(lr=5e-4, weight_decay=0.01, warmup_steps=2000),
    )
    return _smoke(cfg, "debug") if smoke else cfg


CONTRASTIVE_RECIPES = {"siglip": siglip, "siglip2": siglip2, "clip": clip, "coca": coca}


# --------------------------------------------------------------------------- data


class ImageTextPairs(torch.utils.data.Dataset):
    """In-memory pairs: `images` uint8 [N, 3, H, W] and N captions; item i is
    {"pixels": uint8 [3, H, W], "text": str}."""

    def __init__(self, images: torch.Tensor, texts: list[str]):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(texts):
            raise DataError(f"need uint8 [N, 3, H, W] images and N texts, got {tuple(images.shape)} and {len(texts)}")
        self.images, self.texts = images, list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.images[i], "text": self.texts[i]}


class ManifestPairs(torch.utils.data.Dataset):
    """JSONL rows {"image": path, "caption" | "text" | "suffix": str}; images are read lazily and
    resized by the model's image processor (`images.to_uint8`, as at inference: to one size, or per
    image at its own aspect ratio for NaFlex, whose batches are packed)."""

    def __init__(self, manifest: str | Path, images: ImageSide, image_root: str | None = None):
        self.rows, self.images = [], images
        root = Path(image_root) if image_root else Path(manifest).parent
        try:
            lines = Path(manifest).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:  # bad UTF-8 is a ValueError
            raise DataError(f"cannot read manifest {manifest} ({getattr(e, 'strerror', None) or e})") from None
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line) if line.strip() else None
            except ValueError:
                raise DataError(f"{manifest}:{n} is not JSON") from None
            if row is None:
                continue
            if not isinstance(row, dict):
                raise DataError(f"{manifest}:{n} is not a JSON object")
            text = next((row[k] for k in ("caption", "text", "suffix") if isinstance(row.get(k), str)), None)
            if not isinstance(row.get("image"), str) or text is None:
                raise DataError(f"{manifest}:{n} needs an \"image\" path and a \"caption\"")
            if not (root / row["image"]).is_file():
                raise DataError(f"{manifest}:{n} names image {root / row['image']}, which does not exist")
            self.rows.append((root / row["image"], text))
        if not self.rows:
            raise DataError(f"manifest {manifest} has no rows")
        self.texts = [t for _, t in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        path, text = self.rows[i]
        return {"pixels": self.images.to_uint8(path), "text": text}


def caption_objects(objects) -> str:
    """Shapes left to right: "a red circle", "a red circle and a blue square", "a, b and c"."""
    parts = [f"a {o.color} {o.shape}" for o in sorted(objects, key=lambda o: (o.box[0] + o.box[2], o.box[1]))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def synthetic_pairs(n: int, seed: int, image_size: int) -> ImageTextPairs:
    """`n` captioned synthetic scenes (1-3 shapes of 6 colours x 5 kinds, no words), rendered at
    `image_size` px (32 at least; the model's image processor resizes a larger one in `collate`)."""
    cfg = SynthConfig(image_size=max(image_size, 32), min_shapes=1, max_shapes=3, word_prob=0.0,
                      colors=("red", "green", "blue", "yellow", "purple", "orange"),
                      shapes=("circle", "square", "triangle", "star", "diamond"), seed=seed)
    rng = np.random.default_rng(seed)
    scenes = [generate_scene(rng, cfg) for _ in range(n)]
    images = torch.stack([torch.from_numpy(np.array(s.image)) for s in scenes])  # [N, H, W, 3] uint8
    images = images.permute(0, 3, 1, 2).contiguous()  # [N, H, W, 3] -> [N, 3, H, W]
    return ImageTextPairs(images, [caption_objects(s.objects) for s in scenes])


def _resized(pairs: ImageTextPairs, images: ImageSide) -> ImageTextPairs:
    """`pairs` with every image resized by `images.to_uint8` (square scenes stay one size)."""
    return ImageTextPairs(torch.stack([images.to_uint8(x) for x in pairs.images]), pairs.texts)


def _datasets(cfg: ContrastiveTrainConfig, images: ImageSide):
    """(train pairs, held-out pairs) from the manifests or the synthetic generator (drawn at the
    image side's `nominal_size`)."""
    if cfg.data.manifest:
        held = ManifestPairs(cfg.data.eval_manifest, images, cfg.data.image_root) if cfg.data.eval_manifest else None
        return ManifestPairs(cfg.data.manifest, images, cfg.data.image_root), held
    n, seed, size = cfg.data.synthetic_scenes, cfg.data.synthetic_seed, images.nominal_size
    return (_resized(synthetic_pairs(n, seed, size), images),
            _resized(synthetic_pairs(max(n // 4, 16), seed + 1, size), images))


# --------------------------------------------------------------------------- model, tokenizer, export


def _preset_config(m: ContrastiveModelConfig):
    """The family's preset config with the loss overrides applied (vocabulary set later)."""
    spec = get_family(m.family)
    if m.source not in spec.presets:
        raise CheckpointError(f"--model {m.source!r} is neither a folder, a Hub name nor a {m.family} preset "
                              f"({', '.join(sorted(spec.presets))})")
    base = spec.presets[m.source]
    overrides = {k: v for k, v in (("contrastive_loss", m.contrastive_loss or None),
                                   ("contrastive_weight", m.contrastive_weight),
                                   ("caption_weight", m.caption_weight)) if v is not None}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(base)})
    if unknown:
        raise ConfigError(f"model.{unknown[0]} does not apply to {m.family} models")
    return dataclasses.replace(base, **overrides)


def build_model(base, tok: Tokenizer, init_std: float, seed: int) -> nn.Module:
    """A float32, randomly initialised model of config `base` (any image-text family) with the
    tokenizer's text vocabulary (`text_vocab_size`) and special ids."""
    spec = family_of(base)
    model = spec.model_class(spec.with_tokenizer(base, tok, text_vocab_size(tok)))
    return init_weights(model, std=init_std, seed=seed).float().train()


def _load_folder(folder: Path, family: str) -> nn.Module:
    _, spec = read_config(folder)
    if spec.name != family:
        raise CheckpointError(f"{folder} holds a {spec.name} model, not a {family} checkpoint")
    return load_hf(folder, dtype="float32").train()


def _tokenizer_dir(cfg: ContrastiveTrainConfig, folder: Path | None, texts: list[str], info: DistInfo) -> Path:
    if cfg.model.tokenizer:
        return Path(cfg.model.tokenizer)
    if folder is not None:
        return folder
    out = Path(cfg.out_dir) / "tokenizer"
    if info.is_main and not reuse_built_tokenizer(Path(cfg.out_dir)):  # reused only on resume
        build_small_tokenizer(texts, out, cfg.model.tokenizer_vocab)
    barrier()
    return out


def export_model(model: nn.Module, out: Path, tok_dir: Path, preprocessor: dict, itm=None) -> Path:
    """The model's folder (`save_hf`: a HF "siglip" folder, or a vlmkit CoCa folder) with the
    tokenizer files and the image preprocessing it was trained with (preprocessor_config.json,
    which inference reads back) beside the weights; `itm` = (head, `ItmHeadConfig`) adds the ITM
    head's files (`training.itm_head`), and without it an earlier export's head files are removed."""
    extra = {n: tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()}
    with tempfile.TemporaryDirectory() as tmp:
        extra[PREPROCESSOR_NAME] = Path(tmp) / PREPROCESSOR_NAME
        extra[PREPROCESSOR_NAME].write_text(json.dumps(preprocessor, indent=2))
        if itm is not None:
            write_itm_head(*itm, Path(tmp))
            extra.update({n: Path(tmp) / n for n in ITM_FILES})
        else:  # a head trained with other weights must not stay beside these
            for name in ITM_FILES if Path(out).is_dir() else ():
                (Path(out) / name).unlink(missing_ok=True)
        return save_hf(model, out, extra_files=extra)


def _exporter(cfg: ContrastiveTrainConfig, model_cfg, tok_dir: Path, preprocessor: dict):
    def export(state: dict[str, torch.Tensor]) -> Path:
        head_state = {k.removeprefix("itm_head."): state.pop(k) for k in list(state) if k.startswith("itm_head.")}
        with torch.device("meta"):
            model = family_of(model_cfg).model_class(model_cfg)
        model.load_state_dict(state, strict=True, assign=True)
        itm = None
        if head_state:
            head_cfg = head_config(model, cfg.itm)
            head = head_cfg.build()
            head.load_state_dict(head_state, strict=True)
            itm = (head, head_cfg)
        return export_model(model, Path(cfg.out_dir) / "export", tok_dir, preprocessor, itm)
    return export


# --------------------------------------------------------------------------- evaluation


def unique_captions(pairs, limit: int) -> list[int]:
    """Indices of the first pair of each distinct caption (at most `limit`): retrieval needs
    every text to have exactly one right image."""
    seen, keep = set(), []
    for i in range(len(pairs)):
        text = pairs.texts[i]
        if text not in seen:
            seen.add(text)
            keep.append(i)
            if len(keep) == limit:
                break
    return keep


def retrieval_hook(pairs, tok: Tokenizer, processor: TwoTowerProcessor, limit: int = 256) -> Hook:
    """Evaluation hook: image<->text recall@1/5 on the held-out pairs with distinct captions."""
    keep = unique_captions(pairs, limit)

    @torch.no_grad()
    def hook(trainer: ContrastiveTrainer, step: int) -> dict:
        model, root = trainer.model, trainer.root
        if hasattr(root, "unshard"):  # FSDP2: the root's own parameters are sharded between forwards
            root.unshard()
        model.eval()
        batches = PairBatches(None, tok, model, 64, processor=processor)
        img, txt = [], []
        for i in range(0, len(keep), 64):
            batch = trainer._to_device(batches.collate([pairs[j] for j in keep[i:i + 64]]))
            ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
            img.append(model.encode_image(**batch).float())  # the image inputs are what is left
            txt.append(model.encode_text(ids, mask).float())
        model.train()
        if hasattr(root, "reshard"):
            root.reshard()
        r = retrieval_recall_from_embeddings(torch.cat(img), torch.cat(txt), torch.arange(len(keep)), ks=(1, 5))
        return {"i2t_r1": r.image_to_text[1], "i2t_r5": r.image_to_text[5], "t2i_r1": r.text_to_image[1],
                "t2i_r5": r.text_to_image[5]}

    return hook


# --------------------------------------------------------------------------- run


@locked_run
def run_contrastive(cfg: ContrastiveTrainConfig, *, resume: bool = False, hooks: list[Hook] = ()) -> TrainResult:
    """Train per `cfg`: process group -> model config -> data -> tokenizer -> model -> stream ->
    `ContrastiveTrainer` (DDP/FSDP there) -> optional resume -> fit (retrieval eval) -> export.
    Under torchrun every rank calls this."""
    from vlmkit.training.recipes import _start  # shared with the PaliGemma recipes

    cfg.validate()
    info = init_distributed(cfg.parallel)
    folder = find_model(cfg.model.source)  # a folder, bundled or Hub name; None: a preset name
    loaded = _load_folder(folder, cfg.model.family) if folder is not None else None
    base = loaded.cfg if loaded is not None else _preset_config(cfg.model)
    preprocessor = image_config(base, folder)  # the folder's, else the family's; written to the export
    images = image_processor(preprocessor)
    train, held = _datasets(cfg, images)
    tok_dir = _tokenizer_dir(cfg, folder, train.texts, info)
    tok = Tokenizer.from_folder(tok_dir)
    torch.manual_seed(cfg.seed)  # the same initialisation on every rank
    model = loaded if loaded is not None else build_model(base, tok, cfg.model.init_std, cfg.seed)
    processor = TwoTowerProcessor.for_model(model, tok, fields=preprocessor, tokenizer_folder=tok_dir)
    stream = ShuffledStream(train, seed=cfg.data.shuffle_seed, rank=info.rank, world_size=info.world_size,
                            equal_split=True)
    batches = PairBatches(stream, tok, model, cfg.micro_batch_size(info.world_size), processor=processor)
    torch.manual_seed(cfg.seed + info.rank)
    hooks = [*([retrieval_hook(held, tok, processor)] if held is not None else []), *hooks]
    trainer = ContrastiveTrainer(cfg, model, batches, info, export_fn=_exporter(cfg, model.cfg, tok_dir, preprocessor),
                                 hooks=hooks)
    _start(trainer, cfg, info, resume, train)
    return trainer.fit()


# --------------------------------------------------------------------------- command line


def add_contrastive_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the contrastive trainer (a `train-contrastive` sub-parser, or standalone)."""
    from vlmkit.training.cli import add_run_arguments

    return add_run_arguments(
        parser, CONTRASTIVE_RECIPES, recipe="contrastive training recipe",
        data="training manifest (JSONL rows {image, caption}); optional with --smoke",
        eval_data="held-out manifest for retrieval recall",
        model="preset of the family (e.g. debug) or a checkpoint folder of the family to fine-tune",
        tokenizer="tokenizer folder (default: the model folder's, or trained on the data)",
        out="run folder (default runs/RECIPE)", smoke="tiny CPU run: debug preset, synthetic scenes",
    )  # fmt: skip


def config_from_args(args: argparse.Namespace, extra: list[str]) -> ContrastiveTrainConfig:
    from vlmkit.training.cli import apply_args

    return apply_args(CONTRASTIVE_RECIPES[args.recipe](smoke=args.smoke), args, extra)


def run_contrastive_args(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    """Run a parsed command; `extra` are `--key.value` overrides. 0, or 2 after a one-line error."""
    from vlmkit.training.cli import run_parsed

    return run_parsed(config_from_args, run_contrastive, args, extra)


def main(argv: list[str] | None = None) -> int:
    parser = add_contrastive_arguments(argparse.ArgumentParser(
        prog="vlmkit train-contrastive", description=__doc__.split("\n")[0], allow_abbrev=False))
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return run_contrastive_args(args, extra)


if __name__ == "__main__":
    sys.exit(main())
