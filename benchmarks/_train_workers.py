"""Worker subprocess of bench_train.py: one framework's contrastive training step, timed over stdin.

    python benchmarks/_train_workers.py FRAMEWORK MODEL BATCH THREADS PRECISION [tiny]

FRAMEWORK is "vlmkit" or "open_clip", MODEL "siglip" or "coca", PRECISION "fp32" or "bf16"
(bf16 autocast around the forward, float32 weights and AdamW, as each framework trains in
bf16); "tiny" swaps in vlmkit's debug presets (open_clip has no tiny equivalent, so
bench_train.py runs only vlmkit then). Both frameworks build from random weights and get the
same seeded random inputs (images of the model's size, BATCH token rows of its full text length
with ids in 1..vocab-1, so no padding and no attention mask on either side), and run the same
step: zero_grad, forward, the framework's own loss, backward, AdamW.

| MODEL  | vlmkit                                      | open_clip                                |
| ------ | ------------------------------------------- | ---------------------------------------- |
| siglip | SiglipTwoTower("base-patch16-224"), sigmoid | ViT-B-16-SigLIP + loss.SigLipLoss        |
| coca   | CoCa("open-clip-b32"), CoCa.loss            | coca_ViT-B-32 + loss.CoCaLoss(2.0, 1.0)  |

SigLIP B/16 on both sides: ViT-B/16 at 224 (196 patches, MAP head) + a 12-layer, 768-wide,
64-token bidirectional text tower pooled at the last position, 203,155,970 parameters each
(checked from `parts` in the JSON). The one difference is the MLP activation: vlmkit's is
SigLIP's tanh-GELU (big_vision / transformers), timm's and open_clip's the exact erf GELU.

Each framework's own bf16 recipe: vlmkit runs `vlmkit.training.contrastive.ContrastiveLoss`
(the trainer's root module: towers under autocast, the loss in float32 on float32 copies of the
embeddings); open_clip runs its training loop's `with autocast(): loss(**model(images, texts))`
(the loss inside autocast).

Commands (see `main`): build (also runs the untimed warm-up step, counting its FLOPs), step,
rss. Each replies with a JSON object.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import count_flops, peak_rss_mb, serve  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to fetch


def _autocast(precision: str):
    """The step's autocast context: bf16 on CPU, or none (fp32)."""
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def vlmkit_setup(model_name: str, tiny: bool, precision: str):
    """-> (model, loss_fn(pixels, ids) -> 0-dim loss, image size, text length, vocab size).

    The loss is the training engine's root module (`ContrastiveLoss`), as `vlmkit train` runs it.
    """
    from vlmkit.models.common.init import init_weights
    from vlmkit.training.contrastive import ContrastiveLoss

    if model_name == "siglip":
        from vlmkit.models.siglip.config import TWO_TOWER_PRESETS
        from vlmkit.models.siglip.two_tower import SiglipTwoTower

        cfg = TWO_TOWER_PRESETS["debug" if tiny else "base-patch16-224"]
        model = init_weights(SiglipTwoTower(cfg), seed=0)
        size, text_len, vocab = cfg.vision.image_size, cfg.text.max_position_embeddings, cfg.text.vocab_size
    else:
        from vlmkit.models.coca import CoCa, CocaConfig

        cfg = CocaConfig.from_preset("debug" if tiny else "open-clip-b32")
        model = init_weights(CoCa(cfg), seed=0)
        size, text_len, vocab = cfg.vision.image_size, cfg.context_length, cfg.vocab_size
    root = ContrastiveLoss(model, _autocast(precision))

    def loss(px, ids):
        return root(ids, None, pixel_values=px)[0]  # no padding: no attention mask

    return model, loss, size, text_len, vocab


def open_clip_setup(model_name: str, tiny: bool, precision: str):
    """As `vlmkit_setup`, for open_clip's model of the same shape (see the module table); the
    loss runs inside autocast, as in open_clip's `train_one_epoch`."""
    import open_clip

    autocast = _autocast(precision)

    if tiny:
        raise ValueError("open_clip has no tiny config here; tiny mode runs vlmkit only")
    if model_name == "siglip":
        model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None, output_dict=True)
        siglip = open_clip.loss.SigLipLoss()

        def loss(px, ids):
            with autocast():
                out = model(px, ids)
                return siglip(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    else:
        model = open_clip.create_model("coca_ViT-B-32", pretrained=None)
        coca = open_clip.loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)  # CoCa paper / open_clip

        def loss(px, ids):
            with autocast():
                out = model(px, ids)  # drops the last token for captioning; labels = ids[:, 1:]
                con, cap = coca(out["image_features"], out["text_features"], out["logits"], out["labels"],
                                out["logit_scale"])
                return con + cap
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model, loss, size, model.text.context_length, model.text.vocab_size


def optimizer(framework: str, model: torch.nn.Module) -> torch.optim.AdamW:
    """Each framework's own AdamW at lr 1e-5, weight decay 0.1 on the matrices only: vlmkit's
    `contrastive.build_optimizer` (the fused kernel), and open_clip's `main.py` (the same two
    groups: params with ndim < 2, "bn" / "ln" / "bias" / "logit_scale" in the name undecayed; torch's
    default implementation)."""
    if framework == "vlmkit":
        from vlmkit.training.config import OptimConfig
        from vlmkit.training.contrastive import build_optimizer

        return build_optimizer(model, OptimConfig(lr=1e-5, weight_decay=0.1))
    flat = lambda n, p: p.ndim < 2 or any(w in n for w in ("bn", "ln", "bias", "logit_scale"))  # noqa: E731
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if flat(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not flat(n, p)], "weight_decay": 0.1}]
    return torch.optim.AdamW(groups, lr=1e-5)


def parts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per top-level child (towers), to show that both sides have the same shapes."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        key = name.split(".")[0]
        out[key] = out.get(key, 0) + p.numel()
    return out


def main(framework: str, model_name: str, batch: str, threads: str, precision: str, tiny: str = "") -> None:
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    state: dict = {}

    def build() -> dict:
        t0 = time.perf_counter()
        setup = vlmkit_setup if framework == "vlmkit" else open_clip_setup
        model, loss_fn, size, text_len, vocab = setup(model_name, tiny == "tiny", precision)
        model.train()
        opt = optimizer(framework, model)
        g = torch.Generator().manual_seed(0)
        px = torch.randn(int(batch), 3, size, size, generator=g)
        ids = torch.randint(1, vocab, (int(batch), text_len), generator=g)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(px, ids)
            loss.backward()
            opt.step()
            return float(loss.detach())

        state["step"] = step
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loss, flops = count_flops(step)  # warm-up: allocates gradients and optimizer state
        versions = {"torch": torch.__version__}
        if framework == "open_clip":
            import open_clip
            import timm

            versions.update(open_clip=open_clip.__version__, timm=timm.__version__)
        return {"params": sum(p.numel() for p in model.parameters()), "parts": parts(model),
                "flops_per_step": flops, "image_size": size, "text_len": text_len, "vocab": vocab,
                "build_s": build_s, "warmup_s": time.perf_counter() - t0, "warmup_loss": loss,
                "threads": torch.get_num_threads(), "precision": precision, "rss_after_warmup_mb": peak_rss_mb(),
                **versions}

    def step() -> dict:
        t0 = time.perf_counter()
        loss = state["step"]()
        return {"s": time.perf_counter() - t0, "loss": loss}

    serve({"build": build, "step": step, "rss": lambda: {"peak_rss_mb": peak_rss_mb()}})


if __name__ == "__main__":
    main(*sys.argv[1:])
