"""The pre-norm RoPE decoder shared by Gemma 1/2, Llama, Mistral and Qwen2; plain PyTorch.

Axes: B batch, T tokens in this call, S key slots (T without a cache, the cache length with one),
D hidden size, H query heads, K key/value heads, hd head dim, V vocabulary.

x -> embed (* sqrt(D) if `embed_scale`) -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm ->
logits. Everything the families do differently is a typed field of `DecoderConfig`: the RMSNorm
variant (`norm_unit_offset`, `norm_scale_in_fp32`), the MLP activation, projection biases, tied
head, RoPE theta and scaling, M-RoPE sections (Qwen2-VL), per-layer sliding windows, grouped KV heads, head_dim, Gemma 2's
sandwich norms, soft-caps and attention scale.

The embedding scale sqrt(D) is rounded to the weight dtype as in the reference (in bf16
sqrt(2048)=45.25 stays 45.25 while sqrt(3072)=55.43 becomes 55.5; using the float32 value would
shift every activation).

Positions are an input, not derived from the mask: the caller (generation adapter) decides the
convention (PaliGemma counts from 1 over non-padding tokens, Llama-style causal LMs from 0; see
`vlmkit.models.llama.model.positions_from_mask`). A sliding window counts cache slots (padding
included), as the reference's mask does.

Contract used by `vlmkit.generation`: `embed(ids)`, `forward(x, positions, key_valid, in_prefix,
slots)`, `logits(h)`, `setup_caches(B, S, dtype, device)`, `clear_caches()`.

Not supported: dropout, longrope RoPE (dynamic NTK: default frequencies within the context), Gemma 3 (QK-norm, local RoPE base), MoE.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.common.attention import attend, prefix_lm_mask
from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.common.kv_cache import KVCache
from vlmkit.models.common.mlp import GatedMLP
from vlmkit.models.common.mrope import mrope_cos_sin
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.rope import apply_rope, rope_cos_sin, rope_inv_freq


class DecoderAttention(nn.Module):
    """Multi-query / grouped-query self-attention with RoPE and an optional static cache."""

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.window = cfg.layer_window(layer)
        D, H, K, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(D, H * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(D, K * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(D, K * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * hd, D, bias=cfg.o_bias)
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


def _norm(cfg: DecoderConfig) -> RMSNorm:
    return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_unit_offset, cfg.norm_scale_in_fp32)


class DecoderBlock(nn.Module):
    """Pre-norm decoder block; `post_norms` (Gemma 2) adds a norm after attention and after the MLP."""

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.attn_norm = _norm(cfg)
        self.self_attn = DecoderAttention(cfg, layer)
        self.mlp_norm = _norm(cfg)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_activation, cfg.mlp_bias)
        self.post_attn_norm = _norm(cfg) if cfg.post_norms else nn.Identity()
        self.post_mlp_norm = _norm(cfg) if cfg.post_norms else nn.Identity()

    def forward(self, x, cos, sin, mask, slots):
        x = x + self.post_attn_norm(self.self_attn(self.attn_norm(x), cos, sin, mask, slots))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Decoder(nn.Module):
    """Decoder stack with a tied (or separate) LM head.

    Use `embed(ids)` for token embeddings, `forward(embeds, ...)` for hidden states and
    `logits(hidden)` for the (soft-capped) vocabulary logits, so that multimodal models can
    splice other embeddings in between.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = _norm(cfg)
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
            positions: [B, T] int64 RoPE positions, [3, B, T] with `mrope_section` (M-RoPE).
            key_valid: [B, S] bool, False for padding / unwritten cache slots.
            in_prefix: [B, S] bool, True for tokens in the bidirectional prefix block (all
                False for a plain causal LM).
            slots: [T] int64 cache slots of the inputs; defaults to 0..T-1 (no cache needed).

        Returns:
            [B, T, D] final-normed hidden states in x's dtype.
        """
        T = x.shape[1]
        c = self.cfg
        if slots is None:
            slots = torch.arange(T, device=x.device)
        # Frequencies are recomputed (cheap, constant under compile) rather than kept as a buffer,
        # so that casting the model to bf16 can never round them.
        inv_freq = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling).to(x.device)
        scale = 1.0 if c.rope_scaling is None else c.rope_scaling.cos_sin_scale
        if c.mrope_section is None:
            cos, sin = rope_cos_sin(positions, inv_freq, x.dtype, scale)
        else:
            cos, sin = mrope_cos_sin(positions, inv_freq, x.dtype, c.mrope_section, scale)
        windows = [c.layer_window(i) for i in range(c.num_layers)]
        masks = {w: prefix_lm_mask(key_valid, in_prefix, slots, w) for w in set(windows)}
        for layer, w in zip(self.layers, windows):
            x = layer(x, cos, sin, masks[w], slots)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, D] -> logits [B, T, V] in h's dtype, soft-capped if configured."""
        # The untied head is called as a module so that a replaced one (int8) works unchanged.
        logits = F.linear(h, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)
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
