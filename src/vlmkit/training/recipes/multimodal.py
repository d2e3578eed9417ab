"""PaLI-3 stage 1 (arXiv:2310.09199, section 3.2): multimodal training with a frozen image encoder.

The contrastively pretrained SigLIP encoder is kept frozen; the projector and the whole
language model (embeddings included) learn from the multimodal task mixture at the base
resolution. It is the long stage: larger batch, longer warm-up, a higher LR than transfer.
"""

from vlmkit.training.config import DataConfig, FreezeConfig, ModelConfig, OptimConfig, TrainConfig


def multimodal(*, smoke: bool = False) -> TrainConfig:
    """Stage-1 config; `smoke`: the debug preset on 8 synthetic scenes, 6 steps."""
    cfg = TrainConfig(
        recipe="multimodal",
        model=ModelConfig(source=""),  # required: --model DIR (pretrained SigLIP + Gemma)
        data=DataConfig(batch_size=256, grad_accum=8, max_length=256),
        optim=OptimConfig(lr=1e-4, weight_decay=1e-4, warmup_steps=1000, min_lr_ratio=0.0),
        freeze=FreezeConfig(vision_tower=True),
        steps=50_000, precision="bf16", ckpt_every=1000, eval_every=1000,
    )
    cfg.parallel.activation_checkpointing = True
    if smoke:
        cfg.model = ModelConfig(source="debug")
        cfg.data = DataConfig(batch_size=4, grad_accum=1, synthetic_scenes=8)
        cfg.optim = OptimConfig(lr=3e-3, warmup_steps=2)
        cfg.parallel.activation_checkpointing = True  # exercised by the smoke test
        cfg.steps, cfg.precision, cfg.ckpt_every, cfg.eval_every, cfg.eval_batches = 6, "bf16", 3, 3, 2
    return cfg
