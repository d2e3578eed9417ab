"""PaLI-3 stage 2 (arXiv:2310.09199, section 3.2): raise the image resolution, train everything.

The stage-1 model is continued at a higher resolution with nothing frozen. The ViT's learned
position table is resampled to the new patch grid (bicubic, as transformers'
`interpolate_pos_encoding`); the model config, the processor's image size and the number of
`<image>` tokens per image follow from the new `image_size`.
"""

from dataclasses import replace

import torch

from vlmkit.errors import ConfigError
from vlmkit.models.paligemma.model import PaliGemma
from vlmkit.models.siglip.model import interpolate_position_embeddings
from vlmkit.training.config import DataConfig, FreezeConfig, ModelConfig, OptimConfig, TrainConfig

POSITION_KEY = "vision_tower.position_embedding.weight"


def raise_resolution(model: PaliGemma, image_size: int) -> PaliGemma:
    """A PaliGemma for `image_size` inputs with `model`'s weights, the position embeddings
    [g*g, D] interpolated to [g'*g', D] (g' = image_size / patch_size). Returns a new model
    sharing the other weight tensors with `model`."""
    try:
        vision = replace(model.cfg.vision, image_size=image_size)
    except ValueError as e:
        raise ConfigError(f"model.image_size={image_size}: {e}") from None
    cfg = replace(model.cfg, vision=vision)
    state = model.state_dict()
    state[POSITION_KEY] = interpolate_position_embeddings(state[POSITION_KEY], vision.grid)
    with torch.device("meta"):
        new = PaliGemma(cfg)
    new.load_state_dict(state, strict=True, assign=True)
    return new


def resolution(*, smoke: bool = False) -> TrainConfig:
    """Stage-2 config (224 -> 448 px); `smoke`: debug preset 32 -> 64 px, 6 steps."""
    cfg = TrainConfig(
        recipe="resolution",
        model=ModelConfig(source="", image_size=448),  # --model: the stage-1 export
        data=DataConfig(batch_size=128, grad_accum=8, max_length=1280),
        optim=OptimConfig(lr=2e-5, weight_decay=1e-4, warmup_steps=200),
        freeze=FreezeConfig(),
        steps=10_000, precision="bf16", ckpt_every=1000, eval_every=1000,
    )
    cfg.parallel.activation_checkpointing = True
    if smoke:
        cfg.model = ModelConfig(source="debug", image_size=64)
        cfg.data = DataConfig(batch_size=4, grad_accum=1, synthetic_scenes=8)
        cfg.optim = OptimConfig(lr=1e-3, warmup_steps=1)
        cfg.parallel.activation_checkpointing = False
        cfg.steps, cfg.precision, cfg.ckpt_every, cfg.eval_every, cfg.eval_batches = 6, "fp32", 3, 0, 2
    return cfg
