"""Gemma 1 / Gemma 2 decoder (arXiv:2403.08295, arXiv:2408.00118), single-device plain PyTorch.

Axes: B batch, T tokens in this call, S key slots (T without a cache, the cache length with one),
D hidden size, H query heads, K key/value heads, hd head dim, V vocabulary.

What differs between Gemma 1 and 2 is a typed field of `GemmaConfig`: the sandwich norms
(`post_norms`), attention and final-logit soft-capping, query_pre_attn_scalar, and alternating
sliding-window layers. Both scale token embeddings by sqrt(D), rounded to the weight dtype
(the reference does so, and in bf16 sqrt(2048)=45.25 becomes 45.25 while sqrt(2304)=48.0 stays
exact; using the float32 value would shift every activation). Both tie the LM head to the
embedding when `tie_embeddings`.

Not supported: RoPE scaling variants, Gemma 3 (QK-norm, local RoPE base), dropout.
"""

import math

import torch
from torch import nn

from vlmkit.models.common.attention import attend, prefix_lm_mask
from vlmkit.models.common.kv_cache import KVCache
from vlmkit.models.common.mlp import GatedMLP
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.rope import apply_rope, rope_cos_sin, rope_inv_freq
from vlmkit.models.gemma.config import GemmaConfig


class GemmaAttention(nn.Module):
    """Multi-query / grouped-query self-attention with RoPE and an optional static cache."""

    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.window = cfg.layer_window(layer)
        D, H, K, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(D, H * hd, bias=False)
        self.k_proj = nn.Linear(D, K * hd, bias=False)
        self.v_proj = nn.Linear(D, K * hd, bias=False)
        self.o_proj = nn.Linear(H * hd, D, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, slots):
        """x [B, T, D]; cos/sin [B, T, hd]; mask [B, 1, T, S]; slots [T] -> [B, T, D]."""
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, K, T, hd]
        v = self.v_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, K, T, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(slots, k, v)  # [B, K, S, hd]
        out = attend(q, k, v, mask, self.cfg.attn_scale, self.cfg.attn_logit_softcap)
        out = out.transpose(1, 2).reshape(B, T, -1)  # [B, T, H * hd]
        return self.o_proj(out)


class GemmaBlock(nn.Module):
    """Pre-norm decoder block; Gemma 2 adds a norm after attention and after the MLP."""

    def __init__(self, cfg: GemmaConfig, layer: int):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.attn_norm = RMSNorm(D, eps)
        self.self_attn = GemmaAttention(cfg, layer)
        self.mlp_norm = RMSNorm(D, eps)
        self.mlp = GatedMLP(D, cfg.intermediate_size)
        self.post_attn_norm = RMSNorm(D, eps) if cfg.post_norms else nn.Identity()
        self.post_mlp_norm = RMSNorm(D, eps) if cfg.post_norms else nn.Identity()

    def forward(self, x, cos, sin, mask, slots):
        x = x + self.post_attn_norm(self.self_attn(self.attn_norm(x), cos, sin, mask, slots))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Gemma(nn.Module):
    """Gemma decoder with tied (or separate) LM head.

    Use `embed(ids)` for token embeddings, `forward(embeds, ...)` for hidden states and
    `logits(hidden)` for the (soft-capped) vocabulary logits, so that multimodal models can
    splice other embeddings in between.
    """

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(GemmaBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] int64 -> [B, T, D] in the weight dtype, scaled by sqrt(D) if configured."""
        x = self.embed_tokens(ids)
        if self.cfg.embed_scale:
            x = x * torch.tensor(math.sqrt(self.cfg.hidden_size), dtype=x.dtype)
        return x

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        key_valid: torch.Tensor,
        in_prefix: torch.Tensor,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder stack.

        Args:
            x: [B, T, D] input embeddings (from `embed`, or spliced multimodal embeddings).
            positions: [B, T] int64 RoPE positions.
            key_valid: [B, S] bool, False for padding / unwritten cache slots.
            in_prefix: [B, S] bool, True for tokens in the bidirectional prefix block.
            slots: [T] int64 cache slots of the inputs; defaults to 0..T-1 (no cache needed).

        Returns:
            [B, T, D] final-normed hidden states in x's dtype.
        """
        T = x.shape[1]
        if slots is None:
            slots = torch.arange(T, device=x.device)
        # Frequencies are recomputed (cheap, constant under compile) rather than kept as a buffer,
        # so that casting the model to bf16 can never round them.
        inv_freq = rope_inv_freq(self.cfg.head_dim, self.cfg.rope_theta).to(x.device)
        cos, sin = rope_cos_sin(positions, inv_freq, x.dtype)
        masks = {
            w: prefix_lm_mask(key_valid, in_prefix, slots, w)
            for w in {self.cfg.layer_window(i) for i in range(self.cfg.num_layers)}
        }
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, masks[self.cfg.layer_window(i)], slots)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, D] -> logits [B, T, V] in h's dtype, soft-capped if configured."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = h @ weight.T
        cap = self.cfg.final_logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def setup_caches(self, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        """Allocate a static KV cache of `max_len` slots in every layer."""
        c = self.cfg
        for layer in self.layers:
            layer.self_attn.cache = KVCache(batch_size, c.num_kv_heads, max_len, c.head_dim, dtype, device)

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.self_attn.cache = None
