"""Training two-tower (SigLIP / CLIP) and CoCa models with the training engine.

Axes: B micro-batch, T text tokens, E embedding width.

What is shared with the PaliGemma `Trainer` and what is not:
- `ContrastiveTrainer` subclasses `Trainer` and reuses its loop (`fit`), logging, evaluation
  hooks, export and checkpointing with exact resume (weights, AdamW state, step, every rank's
  RNG and data position; see `vlmkit.training.checkpoint`). It replaces the loss, the
  optimizer's parameter groups and the step.
- DDP / FSDP2 and activation checkpointing come from `parallelize`, given the model's repeated
  blocks (its family record's `blocks`). The schedule is `optim.lr_factor` (linear warm-up + cosine).

Loss and the global batch. `data.batch_size` is global. The contrastive loss of each rank is the
model's own loss with the process group, i.e. `SigLipLoss` / `ClipLoss` in their distributed
forms: every rank's images are scored against every rank's texts, and the mean over ranks is
the loss of the whole global batch, so DDP's gradient averaging gives the full-batch gradient.
The CoCa captioning term is a mean over caption tokens; each rank rescales its local mean by
`n_local * world / n_global` so that the average over ranks is the mean over all tokens of the
global batch (the result does not depend on how the batch is split). With `grad_accum` > 1 the
micro-batches are separate contrastive batches (negatives only within a micro-batch; the losses
are averaged): exact large-batch contrastive accumulation needs a gradient cache, not done here.

Mixed precision: the towers run under autocast (`precision=bf16`), the losses in float32 on
float32 copies of the embeddings (a bf16 cosine similarity times exp(t') ~ 10..100 is too coarse).

CoCa with a zero loss weight: the parts that feed only the switched-off loss are frozen (and left
out of the optimizer), so they keep their initial values and DDP never waits for their gradients;
with `caption_weight=0` the multimodal decoder is not even run.

ITM (`itm.weight` > 0): an image-text matching head trained beside the model, its loss (hard
negatives mined from the contrastive similarity) added to the others; see `training.itm_head`.

Families. Nothing here tests a model's type: an image-text model (a registry family of kind
"image-text") provides `encode_image(**image_inputs)`, `encode_text`, `forward` (-> image_embeds,
text_embeds, logits), `cfg.contrastive_loss`, `logit_scale` / `logit_bias`, and the properties
`loss_weights`, `loss_only_parts` and `text_format` (`vlmkit.models.common.contracts.TextFormat`).
The image inputs are what the model's image processor makes (`TwoTowerProcessor.images.batch`):
{"pixel_values" [B, 3, S, S]}, or for SigLIP 2 NaFlex the packed {"pixel_values" [N, 3 p p],
"spatial_shapes" [B, 2]} of images resized per sample at their own aspect ratio; the loss passes
them through unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions

from vlmkit.data.datasets import ShuffledStream
from vlmkit.data.processors.two_tower import (ImageSide, TextCleanup, TokenizerCaptions, TwoTowerImageProcessor,
                                              TwoTowerProcessor, tokenize)
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import ConfigError, DataError
from vlmkit.models.itm import ItmHeadConfig
from vlmkit.models.registry import families
from vlmkit.training.collate import BatchStream
from vlmkit.training.config import OptimConfig, ParallelConfig, Precision, check_run_fields, split_batch
from vlmkit.training.itm_head import ItmConfig, build_head, check_trainable, head_config, itm_objective
from vlmkit.training.losses import image_text_loss
from vlmkit.training.optim import lr_factor, set_lr
from vlmkit.training.parallelize import DistInfo, all_reduce_sum, clip_grad_norm, grad_sync, parallelize
from vlmkit.training.trainer import Hook, MetricLogger, NonFiniteLossError, Trainer

Family = Literal["siglip", "siglip2", "coca"]  # registry families of kind "image-text"


@dataclass(kw_only=True)
class ContrastiveModelConfig:
    family: Family = "siglip"
    # A preset of the family (SiglipConfig two-tower / CocaConfig presets, random init) or a
    # checkpoint folder of the family to fine-tune (HF "siglip", or a vlmkit CoCa export).
    source: str = "debug"
    contrastive_loss: str = ""  # "" = the preset's; "sigmoid" (SigLIP) or "softmax" (CLIP)
    contrastive_weight: float | None = None  # CoCa only; None = the preset's
    caption_weight: float | None = None  # CoCa only; None = the preset's
    tokenizer: str | None = None  # folder; None: the checkpoint's, or a small BPE trained on the data
    tokenizer_vocab: int = 512
    init_std: float = 0.02
    max_logit_scale: float = math.log(100.0)  # t' is clamped to [0, this] after each step (open_clip)


@dataclass(kw_only=True)
class ContrastiveDataConfig:
    manifest: str = ""  # JSONL rows {"image": path, "caption": text}
    eval_manifest: str | None = None
    image_root: str | None = None
    batch_size: int = 64  # global image-text pairs per optimizer step
    grad_accum: int = 1
    shuffle_seed: int = 0
    synthetic_scenes: int = 0  # > 0 and no manifest: captioned synthetic scenes, in memory
    synthetic_seed: int = 0


@dataclass(kw_only=True)
class ContrastiveTrainConfig:
    """A contrastive / CoCa run; field names match `TrainConfig` where the meaning is the same."""

    recipe: str = "custom"
    out_dir: str = "runs/contrastive"
    model: ContrastiveModelConfig = field(default_factory=ContrastiveModelConfig)
    data: ContrastiveDataConfig = field(default_factory=ContrastiveDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    itm: ItmConfig = field(default_factory=ItmConfig)  # image-text matching head, off by default
    steps: int = 100
    stop_after: int | None = None
    precision: Precision = "fp32"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = evaluation hooks at the end only
    eval_batches: int = 4  # unused (no evaluation loss); kept for the shared loop
    ckpt_every: int = 50
    keep_checkpoints: int = 2
    export: bool = True

    def micro_batch_size(self, world_size: int) -> int:
        return split_batch(self.data.batch_size, self.data.grad_accum, world_size)

    def validate(self) -> None:
        check_run_fields(self)
        checks = [
            (self.steps > 0 and self.optim.lr > 0, "steps and optim.lr must be > 0"),
            (0 <= self.optim.warmup_steps <= self.steps, "optim.warmup_steps must be in [0, steps]"),
            (self.model.family in image_text_families(),
             f"model.family must be one of {', '.join(image_text_families())}, got {self.model.family!r}"),
            (self.model.contrastive_loss in ("", "sigmoid", "softmax"), "model.contrastive_loss must be sigmoid or softmax"),
            (self.data.manifest or self.data.synthetic_scenes > 0, "data.manifest is required (--data)"),
            (self.log_every > 0 and self.keep_checkpoints > 0, "log_every and keep_checkpoints must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.itm.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def image_text_families() -> list[str]:
    """Names of the registered families this trainer trains."""
    return [f.name for f in families() if f.kind == "image-text"]


# --------------------------------------------------------------------------- text and batches


def text_vocab_size(tok: Tokenizer) -> int:
    """Ids a caption can contain: those below the PaliGemma layout's first `<loc0000>` token.

    Small tokenizers trained here (`build_small_tokenizer`) append 1024 loc, 128 seg and the
    `<image>` token after the text pieces; captions never use them, so a model trained from
    scratch needs no embedding or output rows for them (a 3x smaller output layer at ~500 pieces).
    """
    first_loc = tok.token_to_id("<loc0000>")
    return first_loc if first_loc is not None and first_loc > max(tok.bos_id, tok.eos_id, tok.pad_id) else tok.vocab_size


def tokenize_captions(tok: Tokenizer, texts: list[str], model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (input_ids [B, T] int64, attention_mask [B, T] int64), right-padded, laid out as
    the model's `text_format` says (`vlmkit.data.processors.two_tower.tokenize`, shared with inference)."""
    return tokenize(tok, texts, model.text_format)


class PairBatches(BatchStream):
    """Endless micro-batches of (image, caption) pairs of one rank, resumable at the exact sample.

    `stream` yields {"pixels": uint8 [3, h, w] (resized by the image side's `to_uint8`), "text":
    str} (a `ShuffledStream` over a pairs dataset); batches are the image inputs of
    `processor.images.batch` ({"pixel_values"}, + "spatial_shapes" for NaFlex) and "input_ids",
    "attention_mask" int64 [B, T] from `processor.tokenize`, exactly as inference makes them. The
    processor defaults to `tok`'s captions in the model's layout and `images` (default: the
    family's preprocessing, as the export records it). Streaming and resume come from `BatchStream`.
    """

    def __init__(self, stream: ShuffledStream, tok: Tokenizer, model: nn.Module, micro_batch_size: int,
                 images: ImageSide | None = None, processor: TwoTowerProcessor | None = None):
        super().__init__(stream, None, micro_batch_size)
        self.tok, self.model = tok, model
        if processor is None:
            captions = TokenizerCaptions(tok, model.text_format, TextCleanup.from_folder(tok.name))
            processor = TwoTowerProcessor(captions, images or TwoTowerImageProcessor.for_model(model))
        self.processor = processor

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = self.processor.tokenize([s["text"] for s in samples])
        return {**self.processor.images.batch([s["pixels"] for s in samples]), "input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- model plumbing


def freeze_unused(model: nn.Module) -> list[str]:
    """Freeze the parts that feed only a loss term of weight 0 (`model.loss_only_parts`);
    returns their name prefixes."""
    weights = model.loss_weights
    if not any(weights.values()):
        raise ConfigError(f"every loss weight of the model is 0 ({weights}); nothing to train")
    frozen = [part for term, parts in model.loss_only_parts.items() if not weights.get(term) for part in parts]
    for name, p in model.named_parameters():
        if name.split(".")[0] in frozen:
            p.requires_grad_(False)
    return frozen


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on the matrices of linear / conv /
    attention-projection layers only; embeddings, norms, biases, queries and t', b undecayed."""
    decayed = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            decayed.add(id(m.weight))
        elif isinstance(m, nn.MultiheadAttention):
            decayed.add(id(m.in_proj_weight))
    groups = {True: [], False: []}
    for p in model.parameters():
        if p.requires_grad:
            groups[id(p) in decayed].append(p)
    param_groups = [dict(params=ps, lr=optim.lr, base_lr=optim.lr, weight_decay=optim.weight_decay if d else 0.0)
                    for d, ps in groups.items() if ps]
    # The fused kernel (CPU and CUDA) updates each tensor in one pass: 4-5x faster than the
    # single-tensor loop on a B/16 two-tower (0.58 s vs 2.8 s per step, 1 thread), and like it
    # gives the same bits whatever the grouping (see optim.build_optimizer); elsewhere that loop.
    fused = all(p.device.type in ("cpu", "cuda") for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                             foreach=False, fused=fused or None)


class ContrastiveLoss(nn.Module):
    """Root module of training: holds the image-text model (two-tower or CoCa) as `.model`, and
    with `itm` (its head config) an ITM head as `.itm_head` whose loss is added times `itm_weight`.

    forward(input_ids / attention_mask [B, T], caption_scale, **image_inputs: pixel_values
    [B, 3, S, S] or NaFlex's packed pixel_values + spatial_shapes) -> (loss 0-dim float32,
    {"contrastive", "caption", "itm"} detached parts). Being the root matters for DDP/FSDP, whose
    hooks run around the root's forward (and the head's parameters are the root's own).
    """

    def __init__(self, model: nn.Module, autocast: Callable[[], object] = nullcontext, group=None, *,
                 itm: ItmHeadConfig | None = None, itm_weight: float = 0.0, seed: int = 0):
        super().__init__()
        self.model, self.autocast, self.group = model, autocast, group
        self.itm, self.itm_weight = itm, itm_weight
        if itm is not None:
            self.itm_head = build_head(itm, seed)

    def forward(self, input_ids, attention_mask, caption_scale: float = 1.0, **image_inputs):
        m, out = self.model, None
        with self.autocast():
            if not m.loss_weights.get("caption"):  # no captioning term: no caption decoder to run
                img, txt, logits = m.encode_image(**image_inputs), m.encode_text(input_ids, attention_mask), None
            else:
                out = m(**image_inputs, input_ids=input_ids, attention_mask=attention_mask)
                img, txt, logits = out.image_embeds, out.text_embeds, out.logits
        img, txt = img.float(), txt.float()
        loss = image_text_loss(m, img, txt, logits, input_ids, attention_mask, group=self.group,
                               caption_scale=caption_scale)
        total, parts = loss.total, {"contrastive": loss.contrastive.detach()}
        if loss.caption is not None:
            parts["caption"] = loss.caption.detach()
        if self.itm is not None:
            with self.autocast():
                itm = itm_objective(m, self.itm_head, self.itm.fusion, img, txt, out, input_ids, attention_mask,
                                    self.group)
            total = total + self.itm_weight * itm.loss
            parts["itm"] = itm.loss.detach()
        return total, parts


# --------------------------------------------------------------------------- trainer


class ContrastiveTrainer(Trainer):
    """Train an image-text model (`SiglipTwoTower`, `CoCa`) on a `PairBatches` stream; see the
    module docstring.

    Args: as `Trainer` (`cfg` a `ContrastiveTrainConfig`); `export_fn(state)` writes the export.
    """

    def __init__(self, cfg: ContrastiveTrainConfig, model: nn.Module, batches: PairBatches, info: DistInfo, *,
                 export_fn: Callable[[dict], object] | None = None, hooks: list[Hook] = ()):
        # Not Trainer.__init__: that builds the PaliGemma loss and component-wise optimizer groups.
        if cfg.precision == "fp16":
            raise ConfigError("precision=fp16 is not supported for contrastive training; use bf16")
        self.cfg, self.model, self.batches, self.info = cfg, model, batches, info
        self.eval_data, self.export_fn, self.hooks = None, export_fn, list(hooks)
        self.out = Path(cfg.out_dir)
        freeze_unused(model)
        itm = head_config(model, cfg.itm) if cfg.itm.weight > 0 else None
        if itm is not None:
            check_trainable(model, itm)
        self.loss_module = ContrastiveLoss(model, self._autocast, itm=itm, itm_weight=cfg.itm.weight, seed=cfg.seed)
        self.root = parallelize(self.loss_module, model, info, cfg.parallel)
        self.optimizer = build_optimizer(self.loss_module, cfg.optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=False)
        self.logger = MetricLogger(self.out, info.is_main)
        self.step, self.losses, self.last_eval = 0, [], {}
        self._sd_options = StateDictOptions(full_state_dict=info.strategy == "fsdp",
                                            cpu_offload=info.strategy == "fsdp")

    def _caption_scales(self, micro: list[dict]) -> list[float]:
        """Per micro-batch factor n_local * world * accum / n_global on the mean caption loss."""
        counts = [float(b["attention_mask"][:, 1:].sum()) for b in micro]
        n_global = float(all_reduce_sum(torch.tensor(sum(counts), device=self.info.device)))
        if n_global == 0:
            raise DataError(f"step {self.step + 1}: the batch has no caption tokens")
        return [c * self.info.world_size * len(micro) / n_global for c in counts]

    def train_step(self, snapshot: tuple[dict, dict]) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics."""
        micro = [self._to_device(self.batches.next_batch()) for _ in range(self.cfg.data.grad_accum)]
        scales = self._caption_scales(micro)
        totals = torch.zeros(4, device=self.info.device)  # loss, contrastive, caption, itm
        for i, (batch, scale) in enumerate(zip(micro, scales)):
            with grad_sync(self.root, i == len(micro) - 1):
                loss, parts = self.root(**batch, caption_scale=scale)
            (loss / len(micro)).backward()
            caption = parts.get("caption", loss.new_zeros(())) * scale  # this micro-batch's share of the token mean
            totals += torch.stack([loss.detach(), parts["contrastive"], caption, parts.get("itm", loss.new_zeros(()))])
        # Each rank's contrastive term is its share of the global loss: the mean over ranks is the loss.
        totals = all_reduce_sum(totals) / (self.info.world_size * len(micro))
        loss = float(totals[0])
        if not math.isfinite(loss):
            path = self.save_checkpoint(*snapshot)
            raise NonFiniteLossError(f"loss is {loss} at step {self.step + 1}; stopped and saved the last good "
                                     f"state to {path} (try a lower optim.lr or precision=fp32)")
        grad_norm = clip_grad_norm(self.params, self.cfg.optim.grad_clip)
        lr = set_lr(self.optimizer, lr_factor(self.step, self.cfg.steps, self.cfg.optim.warmup_steps,
                                              self.cfg.optim.min_lr_ratio))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._clamp_temperature()
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "contrastive": float(totals[1])}
        if self.model.loss_weights.get("caption"):
            metrics["caption"] = float(totals[2])
        if self.loss_module.itm is not None:
            metrics["itm"] = float(totals[3])
        return metrics

    @torch.no_grad()
    def _clamp_temperature(self) -> None:
        # exp(t') beyond ~100 makes the softmax/sigmoid saturate and training unstable (CLIP sec. 2.5).
        scale = self.model.logit_scale
        if scale.requires_grad:
            scale.clamp_(0.0, self.cfg.model.max_logit_scale)
