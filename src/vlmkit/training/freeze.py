"""Which component of a `vlm` model a parameter belongs to, and freezing components.

Every `vlm` family composes the same top-level parts under the same names (PaliGemma, LLaVA,
Idefics3 / SmolVLM): `vision_tower`, the connector between the towers (LLaVA's and PaliGemma's
`projector`, Idefics3's `connector`, LLaVA-NeXT's `projector` + `image_newline`) and
`language_model` (the shared decoder). Components are the units recipes freeze or give their
own learning rate:

    vision_tower  the image encoder              model.vision_tower.*, Qwen2-VL's model.visual.* but the merger
    projector     every other top-level part     model.projector.*, model.connector.*, model.visual.merger.*, ...
    embeddings    token embeddings (tied LM head)  model.language_model.embed_tokens.*
    decoder       the rest of the language model  model.language_model.* (blocks, final norm, lm_head)

`freeze.language_model` freezes both of the last two; `freeze.parts` freezes top-level parts by
the model's own names (`--freeze.parts connector,image_newline`). The embeddings are separate from the
decoder because they are tied to the output layer: freezing them keeps the vocabulary geometry of
the pretrained model while the blocks adapt.
"""

from __future__ import annotations

from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.training.config import COMPONENTS, FreezeConfig

_PREFIXES = (
    ("vision_tower.", "vision_tower"),
    # Qwen2-VL keeps its tower and its merger (the connector) under one `visual` part, as HF does.
    ("visual.merger.", "projector"),
    ("visual.", "vision_tower"),
    ("language_model.embed_tokens.", "embeddings"),
    ("language_model.", "decoder"),
)


def component_of(name: str) -> str:
    """Component of a parameter name of a `vlm` model (wrapper prefixes such as `module.` and
    `model.` are ignored); a top-level part that is neither the tower nor the language model is
    the projector."""
    while name.startswith(("module.", "model.")):
        name = name.split(".", 1)[1]
    for prefix, component in _PREFIXES:
        if name.startswith(prefix):
            return component
    return "projector"


def frozen_components(freeze: FreezeConfig) -> set[str]:
    """The components `freeze` fixes (`language_model` = decoder + embeddings)."""
    frozen = {c for c in COMPONENTS if getattr(freeze, c)}
    return frozen | ({"decoder", "embeddings"} if freeze.language_model else set())


def trainable_parts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per top-level part of `model`, under the model's own part names."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".", 1)[0]
        out[part] = out.get(part, 0) + (p.numel() if p.requires_grad else 0)
    return out


def apply_freeze(model: nn.Module, freeze: FreezeConfig) -> dict[str, int]:
    """Set requires_grad=False on the frozen components' parameters (in place).

    Returns the number of trainable parameters per component. Raises ConfigError if nothing is
    left to train.
    """
    frozen = frozen_components(freeze)
    own = {name.split(".", 1)[0] for name, _ in model.named_parameters()}
    unknown = sorted(set(freeze.parts) - own)
    if unknown:
        raise ConfigError(f"freeze.parts: the model has no part {unknown[0]!r} (its parts: {', '.join(sorted(own))})")
    trainable = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():
        component = component_of(name)
        if component in frozen or name.split(".", 1)[0] in freeze.parts:
            p.requires_grad_(False)
        elif p.requires_grad:
            trainable[component] += p.numel()
    if not any(trainable.values()):
        raise ConfigError(f"every parameter is frozen (freeze={sorted(frozen)}); nothing to train")
    return trainable
