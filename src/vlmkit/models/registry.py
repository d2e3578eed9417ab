"""The family registry: one `FamilySpec` record per model family, as data (torchtitan's ModelSpec).

Loading, saving, `vlmkit info` / `create`, the pipeline, generation and training look a family up
here (by name, by HF `model_type`, by config or model class) and never test a model's type.

It lives in `models/` (a leaf) because every field but one is model data; the processor builder
belongs to `vlmkit.data`, so a record names it as a "module:function" string resolved on use.

Registering: a family package holds a `family.py` whose import calls `register(FamilySpec(...))`;
the first lookup imports every `vlmkit.models.<package>.family` module, so adding a family edits no
central list. See docs/adding_a_family.md.
"""

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.common.contracts import GenerationAdapter
from vlmkit.models.common.mapping import Table

# What a family's model is for, i.e. which engine runs it:
#   vlm          images + prompt -> text with the generation engine (`generation` is set)
#   image-text   encode_image / encode_text (+ captions), trained by `vlmkit.training.contrastive`
#   text         a text-only decoder
#   vision       a vision tower alone
Kind = Literal["vlm", "image-text", "text", "vision"]


def _same(key: str) -> str:
    return key


def tokenizer_fields(tok, vocab_size: int | None = None) -> dict[str, int]:
    """The config fields a tokenizer fixes: vocab_size (the tokenizer's unless given) and the
    pad / bos / eos ids; for a family's `with_tokenizer` (`dataclasses.replace(cfg, **these)`)."""
    return dict(vocab_size=vocab_size or tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                eos_token_id=tok.eos_id)


def tied_head_dropped(key: str = r"^lm_head\.weight$"):
    """`dropped_keys` of a family whose checkpoint LM head `key` (a regex) is written but unused
    when the decoder ties it to the embedding (`cfg.text.tie_embeddings`, or `cfg.tie_embeddings`
    for a text-only decoder config)."""
    return lambda cfg: (key,) if getattr(cfg, "text", cfg).tie_embeddings else ()


def vision_language_blocks(model: nn.Module) -> list[nn.Module]:
    """`blocks` of a Type C model: its vision tower's blocks, then its decoder's."""
    return [*model.vision_tower.layers, *model.language_model.layers]


@dataclass(frozen=True, kw_only=True)
class FamilySpec:
    """Everything vlmkit needs to know about one family.

    name: the family's name (`vlmkit create --family NAME`, `model.family` in recipes).
    kind: which engine runs it (see `Kind`).
    config_class / model_class: `model_class(config)` builds the model (on any device, incl. meta).
    model_types: HF `model_type`s read; the first one is written.
    config_from_hf / config_to_hf: config.json dict <-> config (from_hf may raise ValueError,
        TypeError or KeyError; the loader turns them into one CheckpointError line).
    table: cfg -> the one (ours, theirs) mapping table used in both directions.
    normalise_key: checkpoint key -> canonical name the table reads (alias prefixes).
    to_hub_name: canonical name -> the name written to disk.
    dropped_keys: cfg -> regexes of checkpoint keys that are known and unused (a tied LM head).
    presets: named configs (`debug` among them).
    with_tokenizer: (cfg, tokenizer, vocab_size or None) -> cfg sized to the tokenizer's vocabulary
        with its special ids; None for families without text.
    preprocessor_config: cfg -> the image-processing metadata saved beside the weights (or None).
    processor: "module:function" building the family's processor as
        function(folder, tokenizer, model_cfg); None if vlmkit has none for it.
    processor_files: "module:function" giving, as function(model_cfg), the
        `vlmkit.data.processor_files.ProcessorFiles` that `vlmkit create` writes beside the weights
        (tokens the tokenizer must have, processor_config.json, the chat template); None: a
        PaliGemma-layout tokenizer and preprocessor_config.json only.
    blocks: model -> its repeated transformer blocks (units of activation checkpointing / FSDP).
    generation: how the generation engine feeds the model (`kind == "vlm"` only).
    train_format: how `vlmkit train` turns rows into batches (`kind == "vlm"`): "chat" renders the
        conversation with the checkpoint's chat template through the family's processor, loss on
        assistant tokens (`vlmkit.training.chat`); "prefix_lm" is PaliGemma's prefix (read
        bidirectionally with the image) + suffix (predicted).
    """

    name: str
    kind: Kind
    config_class: type
    model_class: type[nn.Module]
    model_types: tuple[str, ...]
    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[[Any], dict]
    table: Callable[[Any], Table]
    blocks: Callable[[nn.Module], list[nn.Module]]
    presets: Mapping[str, Any] = field(default_factory=dict)
    normalise_key: Callable[[str], str] = _same
    to_hub_name: Callable[[str], str] = _same
    dropped_keys: Callable[[Any], tuple[str, ...]] = lambda cfg: ()
    with_tokenizer: Callable[..., Any] | None = None
    preprocessor_config: Callable[[Any], dict] | None = None
    processor: str | None = None
    processor_files: str | None = None
    generation: GenerationAdapter | None = None
    train_format: Literal["chat", "prefix_lm"] = "chat"

    def preset(self, name: str):
        """The named preset config; ConfigError listing the family's presets otherwise."""
        if name not in self.presets:
            choices = ", ".join(sorted(self.presets))
            raise ConfigError(f"unknown {self.name} preset {name!r}; choose from {choices}")
        return self.presets[name]

    def build_processor(self, folder, tokenizer, cfg):
        """The family's processor for a loaded checkpoint folder (resolves `processor`)."""
        if self.processor is None:
            raise ConfigError(f"vlmkit has no processor for {self.name} models")
        return _resolve(self.processor)(folder, tokenizer, cfg)

    def build_processor_files(self, cfg):
        """What `vlmkit create` writes for the family's processor (resolves `processor_files`), or None."""
        return None if self.processor_files is None else _resolve(self.processor_files)(cfg)


def _resolve(dotted: str) -> Callable:
    """The function named by "module:function" (imported on use: records stay in the leaf)."""
    module, _, fn = dotted.partition(":")
    return getattr(importlib.import_module(module), fn)


_FAMILIES: dict[str, FamilySpec] = {}
_discovered = False


def register(spec: FamilySpec) -> FamilySpec:
    """Add a family; its name and model_types must be new (two owners of one would be ambiguous)."""
    if spec.name in _FAMILIES:
        raise ValueError(f"family {spec.name!r} is registered twice")
    taken = {t: f.name for f in _FAMILIES.values() for t in f.model_types}
    for t in spec.model_types:
        if t in taken:
            raise ValueError(f"model_type {t!r} of {spec.name!r} is already read by {taken[t]!r}")
    _FAMILIES[spec.name] = spec
    return spec


def _discover() -> None:
    """Import every `vlmkit.models.<package>.family` module once (each registers its records)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import vlmkit.models as models

    for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda i: i.name):
        if info.ispkg and importlib.util.find_spec(f"vlmkit.models.{info.name}.family") is not None:
            importlib.import_module(f"vlmkit.models.{info.name}.family")


def families() -> list[FamilySpec]:
    """Every registered family, in registration order."""
    _discover()
    return list(_FAMILIES.values())


def get_family(name: str) -> FamilySpec:
    """The family called `name`; ConfigError listing the registered ones otherwise."""
    _discover()
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; choose from {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_for_model_type(model_type, where: str = "config.json") -> FamilySpec:
    """The family that reads HF `model_type`; one CheckpointError line listing the supported ones."""
    for spec in families():
        if model_type in spec.model_types:
            return spec
    supported = ", ".join(t for spec in _FAMILIES.values() for t in spec.model_types)
    raise CheckpointError(f"{where}: unsupported model_type {model_type!r} (supported: {supported})")


def family_of(obj) -> FamilySpec:
    """The family of a model or config, e.g. `family_of(model)`.

    A model is looked up by its config's class first: two families may share a model class (the
    CLIP tower is `SiglipVisionTower` with CLIP's switches) but never a config class.
    """
    cfg = getattr(obj, "cfg", None)
    for kind in (type(cfg), type(obj)):
        for spec in families():
            if kind in (spec.model_class, spec.config_class):
                return spec
    raise ConfigError(f"{type(obj).__name__} belongs to no registered model family")
