"""CoCa, contrastive captioner (arXiv:2205.01917): config and model.

Caption generation is `vlmkit.generation.coca.generate_caption`; the losses are
`vlmkit.training.losses.image_text_loss`.
"""

from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.model import CoCa, CocaOutput

__all__ = ["CoCa", "CocaConfig", "CocaOutput"]
