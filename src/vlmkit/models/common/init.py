"""Weight initialisation for models trained from scratch (random debug checkpoints, our own model).

PyTorch's default nn.Embedding init is N(0, 1), which Gemma's sqrt(D) embedding scale would blow
up; transformer practice (and the HF reference's `_init_weights`) is N(0, 0.02) for every matrix,
zero biases, and norms at identity.
"""

import torch
from torch import nn

from vlmkit.models.common.norms import RMSNorm


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02, seed: int | None = None) -> nn.Module:
    """Re-initialise every parameter of `model` in place (seeded if `seed` is given)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def normal_(t: torch.Tensor) -> None:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std)

    done: set[int] = set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
            normal_(m.weight)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, RMSNorm):
            m.weight.fill_(0.0 if m.unit_offset else 1.0)
        elif isinstance(m, nn.MultiheadAttention):
            normal_(m.in_proj_weight)
            m.in_proj_bias.zero_()
        else:
            continue
        done.update(id(p) for p in m.parameters(recurse=False))
    # Free-standing tensors (MAP probe, pooler queries, CLS embeddings): N(0, std). Scalars (a
    # contrastive temperature or bias) keep the published init their module set.
    for p in model.parameters():
        if id(p) not in done and p.numel() > 1:
            normal_(p)
    return model
