"""Llama 2/3 (arXiv:2307.09288, arXiv:2407.21783), Mistral (arXiv:2310.06825) and Qwen2
(arXiv:2407.10671) decoders.

The computation is the shared `vlmkit.models.common.decoder.Decoder`; `LlamaConfig` sets what
makes it one of these: RMSNorm scaling by w after casting, SwiGLU, no embedding scale, optional
q/k/v biases, sliding windows and RoPE scaling (linear, llama3, yarn).

Positions: transformers' causal LMs count from 0 over the non-padding tokens when generating
(`positions_from_mask`), so a left-padded row gets the positions it would have alone.

Not supported: dynamic / longrope RoPE, Llama 4 (MoE, chunked attention), dropout.
"""

import torch

from vlmkit.models.common.decoder import Decoder


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] (1 = token) -> RoPE positions [B, T] int64, 0-based over tokens.

    As transformers' `generate` builds them (cumsum - 1, padding set to 0); padding slots are
    never attended to, so their position is irrelevant.
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


class Llama(Decoder):
    """The Llama family's decoder class (its own type, so families can be told apart as data);
    built from a `LlamaConfig`."""
