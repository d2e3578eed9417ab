"""The training loop of `vlm` families: next-token loss on the targets, AdamW, accumulation, resume, export.

Loss. Targets are the tokens whose label is not -100: a chat family's assistant turns (see
`vlmkit.training.chat`), PaliGemma's suffix. PaliGemma is trained as a prefix-LM: image tokens
and the prompt (token_type_ids 0) are read bidirectionally and never predicted; the target
suffix (token_type_ids 1) is predicted token by token. Hidden state t predicts token t + 1, so
targets are labels[:, 1:] against hidden[:, :-1], kept only where the target is trained (labels
!= -100, and type 1 where the batch has token_type_ids). Logits
are computed for the kept positions only: with a 257k vocabulary and 256+ image tokens per
example, full [B, T, V] logits would dominate memory.

The loss of a step is the mean over *all* suffix tokens of the global batch (every rank, every
accumulation micro-batch): each micro-batch contributes sum(NLL) / N_global, with N_global
all-reduced before the backward passes. Gradients therefore do not depend on how the batch is
split into ranks and micro-batches, and DDP/FSDP's gradient averaging is undone by a factor
world_size.

Resume. A checkpoint holds weights, optimizer state, the step (the LR schedule is a function of
it), every rank's RNG state and data-stream position, so an interrupted run continues with the
same loss sequence and weights as an uninterrupted one. On another number of ranks (a node
lost, or more GPUs) it continues with the same global batches, a map-style dataset's
permutation being split among the new ranks from where the old ones stopped
(`ShuffledStream.load_resplit_state`); the result equals the uninterrupted run up to float
reduction order, except for per-rank random streams (dropout), which are reseeded. A checkpoint
of another model (architecture, LoRA or freezing) is refused in one line naming the first field
that differs, and metrics.jsonl is cut back to what was logged at the checkpoint, so the
replayed steps appear once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vlmkit.data.processor import IGNORE_INDEX
from vlmkit.errors import CheckpointError, ConfigError, VlmkitError
from vlmkit.models.registry import family_of
from vlmkit.training import checkpoint as ckpt
from vlmkit.training.collate import BatchStream, eval_batches
from vlmkit.training.config import TrainConfig
from vlmkit.training.optim import build_optimizer, lr_factor, set_lr
from vlmkit.training.outdir import trim_metrics
from vlmkit.training.parallelize import (DistInfo, all_reduce_sum, barrier, clip_grad_norm, gather_objects,
                                         grad_sync, parallelize)

Hook = Callable[["Trainer", int], "dict | None"]


class NonFiniteLossError(VlmkitError):
    """The training loss became NaN or infinite (the last good state was saved first)."""


def target_mask(labels: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, T-1]: which next-token targets labels[:, 1:] are trained (labels != -100; with
    token_type_ids, PaliGemma's, suffix tokens only)."""
    keep = labels[:, 1:] != IGNORE_INDEX
    return keep if token_type_ids is None else keep & (token_type_ids[:, 1:] == 1)


class SuffixLMLoss(nn.Module):
    """Root module of training: holds the model as `.model`; forward(batch) -> summed loss.

    The model is fed through its family's generation adapter (`prepare` -> decoder inputs with the
    image features in place, `decoder`), the same contract generation uses, so every `vlm` family
    trains through this one module. Being the root matters for DDP/FSDP, whose hooks run around
    the root's forward.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.adapter = family_of(model).generation
        if self.adapter is None:
            raise ConfigError(f"{family_of(model).name} models have no decoder to train with a next-token loss")

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Batch tensors as from the collators (labels [B, T], -100 where not trained) -> float32
        scalar: sum of the trained targets' NLL."""
        x = self.adapter.prepare(self.model, inputs)
        decoder = self.adapter.decoder(self.model)
        h = decoder(x.embeds, x.positions, x.attention_mask.bool(), x.in_prefix)  # [B, T, D]
        keep = target_mask(labels, inputs.get("token_type_ids"))  # [B, T-1]
        logits = decoder.logits(h[:, :-1][keep])  # [K, V], K kept targets
        return F.cross_entropy(logits.float(), labels[:, 1:][keep], reduction="sum")


@dataclass(kw_only=True)
class TrainResult:
    step: int
    losses: list[float]  # training loss of every step so far (resumed runs included)
    eval: dict = field(default_factory=dict)  # last evaluation metrics
    checkpoint: Path | None = None
    export: Path | None = None
    samples_per_s: float = 0.0  # mean over the steps of this invocation


class MetricLogger:
    """Rank-0 logging: a progress line on stdout, JSONL in OUT/metrics.jsonl, TensorBoard if present."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def size(self) -> int:
        """Bytes logged so far (recorded in each checkpoint; a resume cuts the log back to it)."""
        return self.path.stat().st_size if self.enabled and self.path.is_file() else 0

    def log(self, step: int, metrics: dict, line: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if line:
            print(line, flush=True)


def _model_config(model: nn.Module) -> dict | None:
    """The model's architecture config as a dict (saved in checkpoints, compared on resume)."""
    cfg = getattr(model, "cfg", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def _eta(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Trainer:
    """Train `model` (a `vlm` family's, frozen / LoRA-wrapped already) on `batches` per `cfg`.

    Args:
        cfg: the run config; `cfg.out_dir` receives metrics.jsonl, checkpoints/ and export/.
        model: the model on CPU in float32 (master weights).
        batches: this rank's resumable micro-batch stream.
        info: rank, world size, device and resolved strategy (`init_distributed`).
        eval_data: (dataset, collate function: samples -> batch) for the evaluation loss, or None.
        export_fn: called on rank 0 with the full model state to write the final export.
        hooks: extra evaluation hooks `hook(trainer, step) -> metrics | None`.
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, batches: BatchStream, info: DistInfo, *,
                 eval_data=None, export_fn: Callable[[dict], Path] | None = None, hooks: list[Hook] = ()):
        if cfg.precision == "fp16" and info.strategy == "fsdp":
            raise ConfigError("precision=fp16 needs a sharded grad scaler under FSDP; use bf16")
        self.cfg, self.model, self.batches, self.info = cfg, model, batches, info
        self.eval_data, self.export_fn, self.hooks = eval_data, export_fn, list(hooks)
        self.out = Path(cfg.out_dir)
        self.loss_module = SuffixLMLoss(model)
        self.root = parallelize(self.loss_module, model, info, cfg.parallel)
        self.optimizer = build_optimizer(self.loss_module, cfg.optim, cfg.lr_scale)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.precision == "fp16")
        self.logger = MetricLogger(self.out, info.is_main)
        self.step, self.losses, self.last_eval = 0, [], {}
        self._sd_options = StateDictOptions(full_state_dict=info.strategy == "fsdp",
                                            cpu_offload=info.strategy == "fsdp")

    # ------------------------------------------------------------------ one step

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.info.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, snapshot: tuple[dict, dict]) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics.

        `snapshot` (data state, RNG state from before the step) is what a NaN checkpoint records.
        """
        micro = [self._to_device(self.batches.next_batch()) for _ in range(self.cfg.data.grad_accum)]
        local = [sum(int(target_mask(b["labels"], b.get("token_type_ids")).sum()) for b in micro),
                 sum(b["labels"].shape[0] for b in micro)]  # target tokens, examples (token budgets vary it)
        n_global, n_samples = all_reduce_sum(torch.tensor(local, dtype=torch.float32, device=self.info.device))
        if n_global.item() == 0:
            raise ConfigError(f"step {self.step + 1}: the batch has no target tokens (suffix / assistant) to train on")
        scale = self.info.world_size / n_global  # undo DDP/FSDP's mean over ranks: see module doc
        total = torch.zeros((), device=self.info.device)
        for i, batch in enumerate(micro):
            with grad_sync(self.root, i == len(micro) - 1), self._autocast():
                loss_sum = self.root(**batch)
            self.scaler.scale(loss_sum * scale).backward()
            total += loss_sum.detach()
        loss = float(all_reduce_sum(total) / n_global)
        if not math.isfinite(loss):
            path = self.save_checkpoint(*snapshot)
            raise NonFiniteLossError(
                f"loss is {loss} at step {self.step + 1}; stopped and saved the last good state to {path} "
                "(try a lower optim.lr, optim.grad_clip or precision=fp32)")
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.params, self.cfg.optim.grad_clip)
        lr = set_lr(self.optimizer, lr_factor(self.step, self.cfg.steps, self.cfg.optim.warmup_steps,
                                              self.cfg.optim.min_lr_ratio))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(n_global.item()),
                "samples": int(n_samples.item())}

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainResult:
        """Train until `cfg.steps` (or `cfg.stop_after`), checkpointing, evaluating and exporting."""
        cfg = self.cfg
        end = min(cfg.steps, cfg.stop_after or cfg.steps)
        self.root.train()
        start_step, t0 = self.step, time.perf_counter()
        last_ckpt, samples = None, 0
        while self.step < end:
            snapshot = (self.batches.state_dict(), ckpt.rng_state())
            metrics = self.train_step(snapshot)
            self.step += 1
            self.losses.append(metrics["loss"])
            samples += metrics.get("samples", cfg.data.batch_size)  # a subclass may not count them
            self._log_progress(metrics, start_step, t0, end, samples)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate()
            if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == end:
                last_ckpt = self.save_checkpoint()
        if self.step == cfg.steps and not cfg.eval_every:
            self.evaluate()
        elapsed = time.perf_counter() - t0
        done = self.step - start_step
        result = TrainResult(step=self.step, losses=list(self.losses), eval=self.last_eval, checkpoint=last_ckpt,
                             samples_per_s=samples / elapsed if done else 0.0)
        if self.step == cfg.steps and cfg.export and self.export_fn is not None:
            result.export = self.export()
        return result

    def _log_progress(self, metrics: dict, start_step: int, t0: float, end: int, samples: int) -> None:
        elapsed = time.perf_counter() - t0
        done = self.step - start_step
        sps = samples / elapsed
        eta = elapsed / done * (end - self.step)
        metrics = {**metrics, "samples_per_s": sps, "elapsed_s": elapsed}
        line = None
        if self.step % self.cfg.log_every == 0 or self.step == end:
            line = (f"step {self.step}/{self.cfg.steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.2e} | "
                    f"grad {metrics['grad_norm']:.3f} | {sps:.1f} samples/s | eta {_eta(eta)}")
        self.logger.log(self.step, metrics, line)

    def evaluate(self) -> dict:
        """Mean suffix-token loss on the eval set (all ranks), then the extra hooks' metrics."""
        metrics = {}
        if self.eval_data is not None:
            dataset, to_batch = self.eval_data
            self.root.eval()
            total = torch.zeros(2, device=self.info.device)
            with torch.no_grad(), self._autocast():
                for batch in eval_batches(dataset, to_batch, self.batches.micro_batch_size, self.cfg.eval_batches,
                                          self.info.rank, self.info.world_size):
                    batch = self._to_device(batch)
                    total += torch.stack([self.root(**batch).detach(),
                                          target_mask(batch["labels"], batch.get("token_type_ids")).sum().float()])
            total = all_reduce_sum(total)
            metrics["eval_loss"] = float(total[0] / total[1].clamp(min=1))
            self.root.train()
        for hook in self.hooks:
            metrics.update(hook(self, self.step) or {})
        if metrics:
            shown = " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            self.logger.log(self.step, metrics, f"eval step {self.step} | {shown}")
        self.last_eval = metrics
        return metrics

    # ------------------------------------------------------------------ state

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The model's full state dict (gathered on CPU under FSDP), the model's own names (plus
        `<module>.` names of other modules the loss root holds, e.g. contrastive training's ITM head)."""
        msd, _ = get_state_dict(self.root, self.optimizer, options=self._sd_options)
        return {k.removeprefix("model."): v for k, v in msd.items()}

    def _root_names(self, state: dict) -> dict:
        """Checkpoint names -> the root's: the model's under `model.`, the loss's other modules as saved."""
        others = tuple(f"{name}." for name, _ in self.loss_module.named_children() if name != "model")
        return {k if k.startswith(others) else f"model.{k}": v for k, v in state.items()}

    def save_checkpoint(self, data_state: dict | None = None, rng: dict | None = None) -> Path:
        """Write a checkpoint of the current step (collective: call on every rank)."""
        msd, osd = get_state_dict(self.root, self.optimizer, options=self._sd_options)
        data = gather_objects(data_state if data_state is not None else self.batches.state_dict())
        rngs = gather_objects(rng if rng is not None else ckpt.rng_state())
        root = self.out / "checkpoints"
        if self.info.is_main:
            state = {"data": data, "losses": self.losses, "config": self.cfg.to_dict(),
                     "scaler": self.scaler.state_dict(), "world_size": self.info.world_size,
                     "model_config": _model_config(self.model), "metrics_bytes": self.logger.size()}
            ckpt.save_checkpoint(root, self.step, {k.removeprefix("model."): v for k, v in msd.items()}, osd,
                                 rngs, state, keep=self.cfg.keep_checkpoints)
        barrier()
        return ckpt.step_dir(root, self.step)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimizer, step, RNG and data position from checkpoint `path`."""
        msd, osd, rngs, state = ckpt.load_checkpoint(path, required=ckpt.TRAINER_KEYS)
        shapes = {k.removeprefix("model."): tuple(v.shape) for k, v in self.loss_module.state_dict().items()}
        ckpt.check_resumable(Path(path), state, _model_config(self.model), self.cfg.to_dict(), shapes,
                             {k: tuple(v.shape) for k, v in msd.items()})
        saved_world, rank, step = int(state.get("world_size", 1)), self.info.rank, int(state["step"])
        if saved_world == self.info.world_size:
            self.batches.load_state_dict(state["data"][rank])
            ckpt.set_rng_state(rngs[f"rank{rank}"])
        else:  # elastic: the same global batches continue (see ShuffledStream.load_resplit_state)
            self.batches.load_resplit_state(state["data"])
            # Per-rank random streams (dropout) cannot be re-split: new seeds, still reproducible.
            torch.manual_seed(self.cfg.seed + rank + 7919 * step)
            if self.info.is_main:
                print(f"{path} was written by {saved_world} rank(s), this run has {self.info.world_size}: the data "
                      f"continues at the same global sample; random streams are reseeded", flush=True)
        try:
            set_state_dict(self.root, self.optimizer, model_state_dict=self._root_names(msd),
                           optim_state_dict=osd, options=self._sd_options)
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # names and shapes were checked above
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"resume: cannot restore {path}: {first}") from None
        self.step, self.losses = step, list(state["losses"])
        if self.info.is_main:  # the steps after this checkpoint are replayed: log them once
            trim_metrics(self.logger.path, state.get("metrics_bytes"), step)

    def export(self) -> Path | None:
        """Gather the full model and let rank 0 write it with `export_fn` (collective)."""
        state = self.full_model_state()
        path = self.export_fn(state) if self.info.is_main else None
        barrier()
        return path
