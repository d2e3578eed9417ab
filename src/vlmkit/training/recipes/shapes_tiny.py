"""vlmkit-shapes-tiny: the bundled model, a ~3.3M-parameter PaliGemma trained from scratch on the
synthetic shapes world (`vlmkit.data.synth`) on a 2-core CPU.

    vlmkit train shapes_tiny --out runs/shapes_tiny      # stage 1: about an hour on 2 CPU cores
    vlmkit train shapes_tiny --model runs/shapes_tiny/export --out runs/shapes_tiny_stage2 \
        --data.shuffle_seed 1 --steps 8500                # stage 2: about two hours
    vlmkit train shapes_tiny --model runs/shapes_tiny_stage2/export --out runs/shapes_tiny_stage3 \
        --data.shuffle_seed 2 --steps 7000 --data.synthetic_ocr_scenes 24000   # stage 3: ~1.5 h
    vlmkit train shapes_tiny --model runs/shapes_tiny_stage3/export --out runs/shapes_tiny_stage4 \
        --data.shuffle_seed 3 --steps 6500 --data.synthetic_ocr_scenes 48000   # stage 4: ~1.5 h
    vlmkit train shapes_tiny --model runs/shapes_tiny_stage4/export --out runs/shapes_tiny_stage5 \
        --data.synthetic_seed 2 --data.shuffle_seed 4 --data.synthetic_ocr_seed 8 \
        --data.synthetic_ocr_scenes 24000 --optim.lr 2e-4 --steps 7500         # stage 5: ~1.6 h
    scripts/train_shapes_tiny.sh                          # all stages, evaluate, copy into assets/

Everything is trained (there is no pretrained encoder to keep), on one fixed task mixture of
caption / VQA / detect / OCR. The recipe renders its own training world (`synth_world`): the same
scenes as `vlmkit data synth`, but more of them show a word and OCR is sampled more often, since
words are the rarest and hardest thing to read at 64 px; evaluation uses the default world.

Model (preset `shapes-tiny`): SigLIP 128 wide x 4 layers on 64 px images with 8 px patches
(64 image tokens); Gemma 192 wide x 4 layers, 4 query heads sharing 1 KV head; the vocabulary is
the ~1.5k-id BPE trained on the manifest text (1024 loc + 128 seg tokens included). 64 px divides
1024, so every pixel edge is an exact `<locNNNN>` token.

Optimisation: AdamW, lr 3e-4 for every component (warm-up 200 steps, cosine to 5%). Higher LRs
make the model image-blind (see the comment at `optim`); fp32, because bf16 autocast is not
faster for matrices this small and keeps the run identical across CPUs.

Five stages, each a restart of the previous one from its export (fresh AdamW state, warm-up and
cosine again, rows in another order): stage 1's 5,000 steps, stage 2's 8,500 on the same rows,
stage 3's 7,000 on those rows plus 24,000 extra scenes that each show a word and give one
`ocr` row (`data.synthetic_ocr_scenes`; OCR goes from 9% to 24% of the rows, since reading was
the one skill still missing after stage 2), and stage 4's 6,500 with 48,000 such scenes (OCR 35%
of the rows; reading had begun to form at the end of stage 3; OCR 14% -> 99% exact). Stage 5
(lr 2e-4, 7,500 steps) trains on a fresh world: 30,000 scenes of seed 2 and 24,000 reading
scenes of seed 8, none seen before. After 27,000 steps on the same 30k scenes the model had
started to learn them rather than the world (VQA 88% on training rows, 83% on held-out ones);
new scenes lifted held-out VQA from 84% to 91.5% within 4,000 steps. Whether one long run on
ever-new scenes does better was not measured; the split is how the model was grown within the time of
the sessions that trained it, kept so that scripts/train_shapes_tiny.sh reproduces the shipped
weights.
"""

from vlmkit.data.synth import SynthConfig
from vlmkit.training.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

TRAIN_SCENES = 30_000  # x 4 examples = 120k rows; 5000 steps x 32 is ~1.3 passes over them


def synth_world(seed: int) -> SynthConfig:
    """The training world of this recipe for `seed` (`run` renders train and held-out with it).

    Words on half the scenes (default 30%) and OCR weight 1.5 (default 1): with the defaults
    OCR would be under 5% of the rows, too few to learn to read ~90 words.
    """
    return SynthConfig(
        seed=seed, word_prob=0.5,
        task_weights={"caption": 1.0, "vqa": 2.0, "detect": 2.0, "ocr": 1.5},
    )  # fmt: skip


def shapes_tiny(*, smoke: bool = False) -> TrainConfig:
    """Config of the bundled model; `smoke`: the debug preset on 8 synthetic scenes, 6 steps."""
    cfg = TrainConfig(
        recipe="shapes_tiny",
        out_dir="runs/shapes_tiny",
        model=ModelConfig(source="shapes-tiny", tokenizer_vocab=320, init_std=0.02),
        data=DataConfig(batch_size=32, grad_accum=1, synthetic_scenes=TRAIN_SCENES, synthetic_seed=0,
                        validate_images=False),
        # lr 3e-4, not the 1e-3..2e-3 small LMs usually take: at those the decoder learns the
        # answer priors within ~100 steps, the vision tower's output collapses to an
        # image-independent constant and its gradient to ~1e-4, and the model never reads the
        # image (docs/bundled_model.md, "How the recipe was found"; scripts/diagnose_image_use.py).
        optim=OptimConfig(lr=3e-4, weight_decay=0.05, betas=(0.9, 0.98), warmup_steps=200,
                          min_lr_ratio=0.05, grad_clip=1.0),
        steps=5000, precision="fp32", seed=0, log_every=50, eval_every=1000, eval_batches=8,
        ckpt_every=500, keep_checkpoints=2,
    )
    if smoke:
        cfg.model = ModelConfig(source="debug")
        cfg.data = DataConfig(batch_size=4, grad_accum=1, synthetic_scenes=8)
        cfg.optim = OptimConfig(lr=3e-3, warmup_steps=2)
        cfg.steps, cfg.log_every, cfg.ckpt_every, cfg.eval_every, cfg.eval_batches = 6, 1, 3, 3, 2
    return cfg
