"""Everything distributed and memory-saving, applied from outside the (single-device) model.

- `init_distributed`: reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and starts a
  process group (gloo on CPU, nccl on CUDA). Without torchrun it is a one-process no-op.
- `apply_activation_checkpointing`: every transformer block the model's family record lists
  (`blocks`; a PaliGemma's SigLIP and Gemma blocks) recomputes its activations in backward
  (`torch.utils.checkpoint`, non-reentrant). The block's `forward` is replaced on the instance,
  so parameter names and state dicts do not change.
- `parallelize`: DDP, or FSDP2 (`torch.distributed.fsdp.fully_shard`) with one shard group per
  transformer block plus the root, like torchtitan.
- Collectives used by the trainer (`all_reduce_sum`, `gather_objects`, `grad_sync`).

Checkpoints under FSDP gather a *full* state dict on CPU (torch.distributed.checkpoint.state_dict
with full_state_dict=True) and rank 0 writes it in the same single-file safetensors format as
a one-process run; every rank reads those files back on resume. This keeps one checkpoint
format for every strategy and world size (a run may resume on a different number of ranks), at
the cost of holding the full model on each rank's CPU while saving, which is fine for the
PaliGemma sizes (<= 28B on large hosts). Sharded DCP checkpoints would be the next step for
larger models.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlmkit.errors import ConfigError
from vlmkit.models.registry import family_of
from vlmkit.training.config import ParallelConfig


@dataclass(kw_only=True, frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "none"  # resolved: none / ddp / fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(cfg: ParallelConfig) -> DistInfo:
    """Start the process group if launched by torchrun; resolve the device and strategy."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(cfg.device)
    strategy = cfg.strategy if cfg.strategy != "auto" else ("ddp" if world > 1 else "none")
    if strategy in ("ddp", "fsdp") and world == 1:
        strategy = "none"  # one process: DDP/FSDP would only add overhead, the maths is the same
    if strategy == "none" and world > 1:
        raise ConfigError(f"parallel.strategy=none but torchrun started {world} processes")
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device, strategy=strategy)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of any registered model (its family record's `blocks`), e.g. a
    PaliGemma's SigLIP encoder blocks, then its Gemma decoder blocks."""
    return family_of(model).blocks(model)


def _checkpointed(forward, *args, **kwargs):
    # Non-reentrant checkpointing supports keyword arguments, inputs that do not require grad
    # (frozen vision tower) and FSDP2's hooks around the block.
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module, blocks: list[nn.Module] | None = None) -> int:
    """Recompute each transformer block's activations in backward; returns the block count.

    `blocks` defaults to the model's family's (`transformer_blocks`).
    """
    blocks = transformer_blocks(model) if blocks is None else blocks
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    return len(blocks)


def parallelize(loss_module: nn.Module, model: nn.Module, info: DistInfo, cfg: ParallelConfig,
                blocks: list[nn.Module] | None = None) -> nn.Module:
    """Apply activation checkpointing and DDP/FSDP2; returns the module to call in training.

    `loss_module` is the root that computes the loss and holds `model`; `blocks` (default: the
    family record's, `transformer_blocks`) are the units of checkpointing and sharding.
    """
    blocks = transformer_blocks(model) if blocks is None else blocks
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model, blocks)
    loss_module.to(info.device)
    if info.strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(loss_module, device_ids=ids,
                                                   find_unused_parameters=cfg.find_unused_parameters)
    if info.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(loss_module)  # root: embeddings, projector, norms, patch embedding
        return loss_module
    return loss_module


def unwrap(root: nn.Module) -> nn.Module:
    """The loss module inside a DDP wrapper (FSDP2 modifies modules in place, nothing to strip)."""
    return root.module if isinstance(root, nn.parallel.DistributedDataParallel) else root


@contextlib.contextmanager
def grad_sync(root: nn.Module, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter for accumulation micro-batches but the last."""
    if isinstance(root, nn.parallel.DistributedDataParallel) and not enabled:
        with root.no_sync():
            yield
        return
    if hasattr(root, "set_requires_gradient_sync"):  # an FSDP2 module
        root.set_requires_gradient_sync(enabled)
    yield


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over ranks (a copy; `x` itself is unchanged)."""
    x = x.clone()
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable Python objects)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient L2 norm (over all ranks' shards); returns the norm before clipping."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, replicated after the internal all-reduce
        norm = norm.full_tensor()
    return float(norm)
