"""Task transfer: fine-tune a pretrained `vlm` checkpoint on one task mixture, image encoder frozen.

`--model DIR` is a folder of any `vlm` family: PaliGemma trains on prefix/suffix rows; the chat
families (LLaVA, LLaVA-NeXT, Idefics3 / SmolVLM, ...) on chat rows or prefix/suffix rows, loss on
the assistant turns only (see `vlmkit.training.chat`).

PaliGemma's transfer recipes (arXiv:2407.07726, section 6) fine-tune with a short cosine
schedule, small batch and low LR; freezing the ViT is the cheap variant that keeps the image
features the model was pretrained on, which is what small datasets want. Set
``--freeze.vision_tower false`` for full fine-tuning, ``--freeze.projector`` /
``--freeze.language_model`` / ``--freeze.parts NAME,...`` to freeze other parts, or
``--lora.enabled true`` for adapters on the decoder's linear layers.
"""

from vlmkit.training.config import DataConfig, FreezeConfig, ModelConfig, OptimConfig, TrainConfig


def finetune(*, smoke: bool = False) -> TrainConfig:
    """Fine-tuning config; `smoke`: the debug preset on 8 synthetic scenes, 6 steps, seconds on CPU."""
    cfg = TrainConfig(
        recipe="finetune",
        model=ModelConfig(source=""),  # required: --model DIR (a pretrained checkpoint)
        data=DataConfig(batch_size=32, grad_accum=1, max_length=512),
        optim=OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=50, grad_clip=1.0),
        freeze=FreezeConfig(vision_tower=True),
        steps=1000, precision="bf16", ckpt_every=250, eval_every=250,
    )
    if smoke:
        cfg.model = ModelConfig(source="debug")
        cfg.data = DataConfig(batch_size=4, grad_accum=2, synthetic_scenes=8)
        cfg.optim = OptimConfig(lr=3e-3, warmup_steps=2)
        cfg.steps, cfg.precision, cfg.ckpt_every, cfg.eval_every, cfg.eval_batches = 6, "fp32", 3, 0, 2
    return cfg
