"""SigLIP text tower (arXiv:2303.15343), equal to transformers' SiglipTextModel; plain PyTorch.

Axes: B batch, T tokens, D hidden size, E projection (embedding) width.

Token + learned position embeddings -> bidirectional pre-LN encoder blocks (the vision tower's
`EncoderBlock`, no causal mask, unlike CLIP) -> final LayerNorm -> the LAST position's state
through a linear `head`. SigLIP was trained with every caption padded to the full length
(`padding="max_length"`), so the last position is usually a pad token, whose state has attended to
the whole caption; pass the same padding at inference. An `attention_mask` hides padding keys as
the reference does, but the pooled state is still read at the last position.

Not supported: dropout, position ids other than 0..T-1.
"""

import torch
from torch import nn

from vlmkit.errors import PromptTooLongError
from vlmkit.models.siglip.config import SiglipTextConfig
from vlmkit.models.siglip.model import EncoderBlock


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] (1/True = token) -> bool attention mask [B, 1, T, T] (keys only).

    A row without any token is opened fully, so that softmax stays finite (its output is noise).
    """
    keys = attention_mask.bool()
    keys = keys | ~keys.any(dim=-1, keepdim=True)  # [B, T]
    return keys[:, None, None, :].expand(-1, 1, keys.shape[1], -1)  # [B, 1, T, T]


class SiglipTextTower(nn.Module):
    """input_ids [B, T] int64 -> (hidden states [B, T, D], pooled [B, E]) in the weight dtype."""

    def __init__(self, cfg: SiglipTextConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, D)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, D)
        self.layers = nn.ModuleList(
            EncoderBlock(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
            for _ in range(cfg.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(D, cfg.projection_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of captions.

        Args:
            input_ids: [B, T] int64 with T <= max_position_embeddings.
            attention_mask: optional [B, T] (1 = token, 0 = padding); None attends everywhere.

        Returns:
            (final-normed hidden states [B, T, D], pooled = head(state at position T-1) [B, E]).
        """
        T = input_ids.shape[1]
        if T > self.cfg.max_position_embeddings:
            limit = self.cfg.max_position_embeddings
            raise PromptTooLongError(f"{T} text tokens exceed the text tower's {limit} positions")
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:T][None]  # [B, T, D]
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.final_layer_norm(x)
        return x, self.head(x[:, -1])
