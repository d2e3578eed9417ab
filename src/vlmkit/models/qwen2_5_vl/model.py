"""Qwen2.5-VL (arXiv:2502.13923), single-device plain PyTorch.

Axes as in models/qwen2_vl/model.py. Qwen2-VL's composition unchanged: what differs is data in
the config, i.e. the tower's switches (window attention with full-attention blocks, RMSNorm,
SwiGLU MLP, RMSNorm in the merger: models/parts/qwen2_vit) and `tokens_per_second`, which spaces
a video's temporal M-RoPE positions by absolute time (models/common/mrope). The class exists so
that a model names its family.
"""

from vlmkit.models.qwen2_vl.model import Qwen2VL


class Qwen2_5_VL(Qwen2VL):
    """Qwen2VL built from a Qwen2_5_VLConfig."""
