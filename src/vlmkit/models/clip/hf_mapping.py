"""CLIP vision tower <-> Hugging Face names and configs (transformers' CLIPVisionModel layout).

The tower's names are SigLIP's plus the class embedding and `pre_layrnorm` (HF's spelling);
`siglip_map.vision_table(cfg)` adds those from the config's switches. Hub checkpoints put the
names under `vision_model.` (transformers 5 saves them without); we read both, write the hub one.
"""

from vlmkit.models.clip.config import ClipVisionConfig
from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.siglip import hf_mapping as siglip_map
from vlmkit.models.common.mapping import Table

HUB_PREFIX = "vision_model."

# transformers' CLIPVisionConfig defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
    num_attention_heads=12, num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def table(cfg: ClipVisionConfig) -> Table:
    return siglip_map.vision_table(cfg)


def normalise_key(key: str) -> str:
    return key[len(HUB_PREFIX):] if key.startswith(HUB_PREFIX) else key


def to_hub_name(key: str) -> str:
    return HUB_PREFIX + key


def config_from_hf(d: dict) -> ClipVisionConfig:
    """HF `clip_vision_model` dict -> ClipVisionConfig (missing fields take transformers' defaults)."""
    d = {**_HF_DEFAULTS, **d}
    return ClipVisionConfig(**siglip_map.vision_shape_from_hf(d), hidden_act=activation_from_hf(d["hidden_act"]))


def config_to_hf(c: ClipVisionConfig) -> dict:
    """`projection_dim` is written as transformers' default: the tower has no projection."""
    return dict(
        architectures=["CLIPVisionModel"], model_type="clip_vision_model", **siglip_map.vision_shape_to_hf(c),
        projection_dim=_HF_DEFAULTS["projection_dim"], hidden_act=TO_HF_ACTIVATION[c.hidden_act],
    )
