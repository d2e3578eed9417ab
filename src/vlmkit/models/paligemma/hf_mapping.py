"""PaliGemma <-> Hugging Face names and configs.

We write the hub layout (`vision_tower.vision_model.*`, `language_model.model.*`,
`multi_modal_projector.linear.*`), which every transformers version loads; on reading we also
accept transformers 5's own layouts by normalising prefixes first (`HF_PREFIX_ALIASES`).
"""

from vlmkit.models.common.mapping import Table
from vlmkit.models.gemma import hf_mapping as gemma_map
from vlmkit.models.paligemma.config import PaliGemmaConfig
from vlmkit.models.siglip import hf_mapping as siglip_map

# (alias prefix, canonical hub prefix), applied in order to checkpoint keys before mapping.
HF_PREFIX_ALIASES: list[tuple[str, str]] = [
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
]


def table(cfg: PaliGemmaConfig) -> Table:
    """Ours -> canonical names (with `vision_tower.` for the vision root, see `to_hub_name`)."""
    return (
        [(f"vision_tower.{o}", f"vision_tower.{t}") for o, t in siglip_map.VISION_TABLE]
        + [(f"language_model.{o}", f"language_model.{t}") for o, t in gemma_map.table(cfg.text)]
        + [("projector", "multi_modal_projector.linear")]
    )


def normalise_key(key: str) -> str:
    for alias, canonical in HF_PREFIX_ALIASES:
        if key.startswith(alias):
            key = canonical + key[len(alias):]
    return key


def to_hub_name(key: str) -> str:
    """Canonical name -> the name written to disk (vision weights under `vision_model.`)."""
    if key.startswith("vision_tower."):
        return "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def config_from_hf(d: dict) -> PaliGemmaConfig:
    text = dict(d.get("text_config") or {})
    text.setdefault("vocab_size", d.get("vocab_size", 257216))
    return PaliGemmaConfig(
        vision=siglip_map.vision_config_from_hf(d.get("vision_config") or {}),
        text=gemma_map.config_from_hf(text),
        image_token_id=d.get("image_token_index", d.get("image_token_id", 256000)),
    )


def config_to_hf(c: PaliGemmaConfig) -> dict:
    vision = siglip_map.vision_config_to_hf(c.vision)
    vision.update(projection_dim=c.text.hidden_size, num_image_tokens=c.num_image_tokens)
    text = gemma_map.config_to_hf(c.text)
    text["num_image_tokens"] = c.num_image_tokens
    return dict(
        architectures=["PaliGemmaForConditionalGeneration"], model_type="paligemma",
        vision_config=vision, text_config=text, image_token_index=c.image_token_id,
        projection_dim=c.text.hidden_size, hidden_size=c.text.hidden_size,
        vocab_size=c.text.vocab_size, bos_token_id=c.text.bos_token_id,
        eos_token_id=c.text.eos_token_id, pad_token_id=c.text.pad_token_id,
        tie_word_embeddings=c.text.tie_embeddings,
    )
