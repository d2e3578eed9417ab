"""Gemma 1 / Gemma 2 decoder (arXiv:2403.08295, arXiv:2408.00118).

The computation is the shared `vlmkit.models.common.decoder.Decoder`; `GemmaConfig` sets what
makes it Gemma: RMSNorm with (1 + w) scaled in float32, the sqrt(D) embedding scale, the GeGLU
MLP, a tied LM head, and for Gemma 2 the sandwich norms (`post_norms`), attention and
final-logit soft-capping, query_pre_attn_scalar and alternating sliding-window layers.

Not supported: RoPE scaling in Gemma checkpoints, Gemma 3 (QK-norm, local RoPE base), dropout.
"""

from vlmkit.models.common.decoder import Decoder


class Gemma(Decoder):
    """The Gemma family's decoder class (its own type, so families can be told apart as data);
    built from a `GemmaConfig`."""
