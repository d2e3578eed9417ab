"""CoCa registry record. CoCa has no transformers format: a folder holds our parameter names and
the `CocaConfig` fields as config.json (model_type "vlmkit-coca"), read and written strictly."""

from dataclasses import asdict, fields, replace

from vlmkit.models.coca.config import PRESETS, CocaConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.mapping import identity_table
from vlmkit.models.registry import FamilySpec, register, tokenizer_fields
from vlmkit.models.siglip.config import SiglipVisionConfig
from vlmkit.models.siglip.family import image_processor_config

MODEL_TYPE = "vlmkit-coca"
# Top-level parameters and modules of `CoCa` (names are kept as they are on disk).
PARTS = ["vision_tower", "contrastive_pooler", "caption_pooler", "image_proj", "token_embedding",
         "position_embedding", "cls_embedding", "unimodal_layers", "text_norm", "text_proj",
         "multimodal_layers", "final_norm", "lm_head", "logit_scale", "logit_bias"]


def config_from_hf(d: dict) -> CocaConfig:
    """config.json -> CocaConfig; an unknown or missing field raises TypeError (one line upstream)."""
    known = {f.name for f in fields(CocaConfig)}
    unknown = sorted(set(d) - known - {"model_type", "torch_dtype"})
    if unknown:
        raise ValueError(f"unknown CoCa config fields {unknown}")
    values = {k: v for k, v in d.items() if k in known}
    return CocaConfig(**{**values, "vision": SiglipVisionConfig(**values.get("vision", {}))})


def config_to_hf(cfg: CocaConfig) -> dict:
    return {"model_type": MODEL_TYPE, **asdict(cfg)}


def with_tokenizer(cfg: CocaConfig, tok, vocab_size: int | None = None) -> CocaConfig:
    return replace(cfg, **tokenizer_fields(tok, vocab_size))


COCA = register(FamilySpec(
    name="coca", kind="image-text", config_class=CocaConfig, model_class=CoCa, model_types=(MODEL_TYPE,),
    config_from_hf=config_from_hf, config_to_hf=config_to_hf, table=lambda cfg: identity_table(PARTS),
    presets=PRESETS, with_tokenizer=with_tokenizer,
    preprocessor_config=lambda cfg: image_processor_config(cfg.vision.image_size),
    blocks=lambda model: [*model.vision_tower.layers, *model.unimodal_layers, *model.multimodal_layers],
))
