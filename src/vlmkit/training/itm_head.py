"""ITM as an extra objective of contrastive / CoCa training (`--itm.weight W`), and the trained
head on disk.

Axes: B pairs per rank, T text tokens, E embedding width, W fused width.

Training: with `itm.weight` > 0 the `ContrastiveLoss` root holds an ITM head (the one the model's
`itm_head_config` names: `PairItmHead` for two-towers, `ItmHead` on CoCa's multimodal CLS state)
and adds weight * ITM loss, with negatives mined from the contrastive similarity
(`vlmkit.training.itm.itm_loss_distributed`: the local batch, or the global one under DDP/FSDP).
The head sits beside the model in the root, so checkpoints hold it (``itm_head.*`` names) and its
AdamW state, and resume is exact. The draws use torch's global generator, which checkpoints save
per rank. Pairs with the same caption tokens share a group id (`caption_ids`), so a second "a red
circle" in the batch is never drawn as the negative of the first.

On disk: the export folder holds the head as ``itm_head.safetensors`` (no pickle) and its
`ItmHeadConfig` as ``itm_head.json``; `load_itm_model(folder)` rebuilds model + head.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.itm import ItmHeadConfig
from vlmkit.training.itm import (ItmResult, coca_scorer_distributed, itm_loss_distributed,
                                 two_tower_scorer_distributed)

ITM_WEIGHTS = "itm_head.safetensors"
ITM_CONFIG = "itm_head.json"
ITM_FILES = (ITM_WEIGHTS, ITM_CONFIG)
_HASH_BASE, _HASH_MOD = 1_000_003, 2**31 - 1  # caption hash: h * base + id < 2^52, no int64 overflow


@dataclass(kw_only=True)
class ItmConfig:
    weight: float = 0.0  # ITM loss weight added to the contrastive (+ caption) loss; 0 = no ITM head
    hidden_dim: int = 0  # two-towers: the pair MLP's hidden width; 0 = the model's default (E)

    def validate(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"itm.weight must be >= 0, got {self.weight}")
        if self.hidden_dim < 0:
            raise ConfigError(f"itm.hidden_dim must be >= 0, got {self.hidden_dim}")


def head_config(model: nn.Module, cfg: ItmConfig) -> ItmHeadConfig:
    """The model's ITM head config with `cfg.hidden_dim` applied (pair heads only)."""
    base = model.itm_head_config
    if cfg.hidden_dim and base.fusion == "pair":
        return dataclasses.replace(base, hidden_dim=cfg.hidden_dim)
    return base


def build_head(head_cfg: ItmHeadConfig, seed: int) -> nn.Module:
    """A head initialised from `seed` alone (every rank builds the same one, whatever its RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return head_cfg.build()


def check_trainable(model: nn.Module, head_cfg: ItmHeadConfig) -> None:
    """A multimodal head reads the caption decoder, which a caption weight of 0 freezes."""
    if head_cfg.fusion == "multimodal" and not model.loss_weights.get("caption"):
        raise ConfigError("itm.weight > 0 needs model.caption_weight > 0: the ITM head reads the multimodal "
                          "decoder, which is frozen without the captioning loss")


@torch.no_grad()
def caption_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] right-padded tokens -> [B] int64 polynomial hash of each caption's tokens (padding
    skipped, so the id does not depend on the batch's padded length): equal captions, equal ids,
    on every rank."""
    h = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    for t in range(input_ids.shape[1]):
        step = (h * _HASH_BASE + input_ids[:, t] + 1) % _HASH_MOD
        h = torch.where(attention_mask[:, t].bool(), step, h)
    return h


def _scorer(fusion: str, model, head, img, txt, out, group):
    if fusion == "pair":
        return two_tower_scorer_distributed(head, img, txt, group)
    return coca_scorer_distributed(model, head, out, group)


def itm_objective(model: nn.Module, head: nn.Module, fusion: str, img: torch.Tensor, txt: torch.Tensor, out,
                  input_ids: torch.Tensor, attention_mask: torch.Tensor, group=None) -> ItmResult:
    """ITM loss of a batch of matching pairs: img, txt [B, E] float32 embeddings (with gradient:
    a pair head trains the towers too); `out` the model's forward output (CoCa: `CocaOutput`,
    which the multimodal head re-pairs; None for a pair head). Negatives are mined on
    exp(t') * img @ txt.T."""
    score_fn = _scorer(fusion, model, head, img, txt, out, group)
    return itm_loss_distributed(score_fn, img, txt, model.logit_scale.exp(), None,
                                caption_ids(input_ids, attention_mask), group=group)


def write_itm_head(head: nn.Module, head_cfg: ItmHeadConfig, folder: Path) -> None:
    """Write ``itm_head.safetensors`` and ``itm_head.json`` into `folder`."""
    state = {k: v.detach().float().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(folder / ITM_WEIGHTS))
    (folder / ITM_CONFIG).write_text(json.dumps(dataclasses.asdict(head_cfg), indent=2))


def _read_head_config(folder: Path) -> ItmHeadConfig:
    try:
        fields = json.loads((folder / ITM_CONFIG).read_text(encoding="utf-8"))
        cfg = ItmHeadConfig(**fields)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / ITM_CONFIG} is not a valid ITM head config ({e})") from None
    if cfg.fusion not in ("pair", "multimodal"):
        raise CheckpointError(f"{folder / ITM_CONFIG}: unknown fusion {cfg.fusion!r}")
    if not all(isinstance(v, int) and v >= 0 for v in (cfg.dim, cfg.hidden_dim)):
        raise CheckpointError(f"{folder / ITM_CONFIG}: dim and hidden_dim must be integers >= 0")
    return cfg


def load_itm_head(folder: str | Path, model: nn.Module) -> tuple[nn.Module, ItmHeadConfig]:
    """The ITM head saved in checkpoint `folder` for `model` (float32, eval mode), strictly."""
    folder = Path(folder)
    if not (folder / ITM_WEIGHTS).is_file():
        raise CheckpointError(f"{folder} has no ITM head: train it with --itm.weight > 0")
    cfg = _read_head_config(folder)
    want = model.itm_head_config
    if (cfg.fusion, cfg.dim) != (want.fusion, want.dim):
        raise CheckpointError(f"{folder / ITM_CONFIG} describes a {cfg.fusion} head of width {cfg.dim}; the model "
                              f"needs a {want.fusion} head of width {want.dim}")
    head = cfg.build()
    try:
        head.load_state_dict(load_file(str(folder / ITM_WEIGHTS)), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load {folder / ITM_WEIGHTS}: {first}") from None
    return head.float().eval(), cfg


def load_itm_model(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """(model, ITM head) of a vlmkit two-tower or CoCa checkpoint folder, float32, eval mode."""
    from vlmkit.weights.hf import load_hf, read_config

    _, spec = read_config(Path(folder))
    if spec.kind != "image-text":
        raise CheckpointError(f"{folder} holds a {spec.name} model; ITM needs a two-tower or CoCa checkpoint")
    model = load_hf(folder, dtype="float32").eval()
    return model, load_itm_head(folder, model)[0]


def match_probability(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits [B, 2] -> [B] float32 probability of "match" (class 1)."""
    return logits.float().softmax(-1)[:, 1]
