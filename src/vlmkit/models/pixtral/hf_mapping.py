"""Pixtral-ViT <-> Hugging Face names and configs (transformers' PixtralVisionModel).

Our names are transformers' except that the blocks sit at `layers.{}` (the `blocks(model)` /
feature-selection contract of the vision towers) where transformers nests them in
`transformer.layers.{}`. PixtralVisionModel has no `vision_model.` wrapper, so inside LLaVA its
keys are `vision_tower.patch_conv.*`, `vision_tower.transformer.layers.*`.
"""

from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.common.mapping import Table
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig

TABLE: Table = [
    ("patch_conv", "patch_conv"),
    ("ln_pre", "ln_pre"),
    ("layers.{}", "transformer.layers.{}"),
]

# transformers' PixtralVisionConfig defaults, for fields a config.json leaves out (the published
# mistral-community/pixtral-12b vision_config names only a few).
_HF_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    num_channels=3, image_size=1024, patch_size=16, hidden_act="gelu")


def table(cfg: PixtralVisionConfig) -> Table:
    return TABLE


def config_from_hf(d: dict) -> PixtralVisionConfig:
    """HF `pixtral` vision dict -> config; RoPE theta from `rope_parameters` (5.x) or `rope_theta` (4.x)."""
    d = {**_HF_DEFAULTS, **d}
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") not in ("axial", "default"):
        raise ValueError(f"unsupported Pixtral vision rope_type {rope['rope_type']!r} (only axial)")
    return PixtralVisionConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"], num_channels=d["num_channels"], image_size=d["image_size"],
        patch_size=d["patch_size"], hidden_act=activation_from_hf(d["hidden_act"]),
        rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
    )


def config_to_hf(c: PixtralVisionConfig) -> dict:
    return dict(
        architectures=["PixtralVisionModel"], model_type="pixtral", hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_channels=c.num_channels, image_size=c.image_size, patch_size=c.patch_size, head_dim=c.head_dim,
        hidden_act=TO_HF_ACTIVATION[c.hidden_act], rope_parameters={"rope_theta": c.rope_theta, "rope_type": "axial"},
    )
