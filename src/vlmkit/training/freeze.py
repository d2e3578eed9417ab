"""Which PaliGemma component a parameter belongs to, and freezing components.

Components (the units PaLI recipes freeze or give their own learning rate):

    vision_tower  SigLIP encoder               model.vision_tower.*
    projector     linear image -> text width   model.projector.*
    embeddings    token embeddings (tied LM head)  model.language_model.embed_tokens.*
    decoder       everything else of Gemma     model.language_model.* (blocks, final norm, lm_head)

The embeddings are separate from the decoder because they are tied to the output layer: freezing
them keeps the vocabulary geometry of the pretrained model while the blocks adapt.
"""

from __future__ import annotations

from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.training.config import COMPONENTS, FreezeConfig

_PREFIXES = (
    ("vision_tower.", "vision_tower"),
    ("projector.", "projector"),
    ("language_model.embed_tokens.", "embeddings"),
    ("language_model.", "decoder"),
)


def component_of(name: str) -> str:
    """Component of a parameter name of `PaliGemma` (wrapper prefixes such as `module.` and
    `model.` are ignored). Raises ValueError for a name outside the four components."""
    while name.startswith(("module.", "model.")):
        name = name.split(".", 1)[1]
    for prefix, component in _PREFIXES:
        if name.startswith(prefix):
            return component
    raise ValueError(f"parameter {name!r} belongs to no PaliGemma component")


def apply_freeze(model: nn.Module, freeze: FreezeConfig) -> dict[str, int]:
    """Set requires_grad=False on the frozen components' parameters (in place).

    Returns the number of trainable parameters per component. Raises ConfigError if nothing is
    left to train.
    """
    frozen = {c for c in COMPONENTS if getattr(freeze, c)}
    trainable = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        component = component_of(name)
        if component in frozen:
            p.requires_grad_(False)
        elif p.requires_grad:
            trainable[component] += p.numel()
    if not any(trainable.values()):
        raise ConfigError(f"every parameter is frozen (freeze={sorted(frozen)}); nothing to train")
    return trainable
