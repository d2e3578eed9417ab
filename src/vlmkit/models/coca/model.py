"""CoCa: Contrastive Captioners (arXiv:2205.01917), single-device plain PyTorch.

Axes: B batch, N image patches, Dv vision width, W decoder width, T text tokens, S cache slots,
n pooler queries, E contrastive embedding width, V vocabulary, H heads, hd head dim.

    image [B,3,H,W] -> ViT (SigLIP tower, no MAP head) -> features [B, N, Dv]
        -> contrastive pooler (1 query)  -> LN -> image_proj -> image embedding [B, E]
        -> caption pooler (n queries)    -> caption tokens [B, n, W]
    ids [B, T] + CLS -> unimodal decoder (causal self-attn only) -> states [B, T+1, W]
        CLS state (last) -> LN -> text_proj -> text embedding [B, E]
    states -> multimodal decoder (causal self-attn, cross-attn to caption tokens, MLP)
        -> LN -> lm_head -> caption logits [B, T, V]; the CLS row's output is the fused
        image-text feature [B, W] read by the ITM head (`vlmkit.models.itm`).

Choices (documented because the paper leaves them open or open_clip differs):
- Two poolers, as in the paper ("parallel": 1 query for the contrastive embedding, n for
  captioning), not open_clip's original single pooler whose first query doubles as the embedding.
- The CLS token always takes its own position row (index context_length), and only sees real
  tokens, so the text embedding does not depend on how much right padding a batch has. open_clip
  puts CLS after the padding instead.
- Each multimodal layer is self-attn -> cross-attn -> one MLP (the paper's figure); open_clip
  alternates full residual blocks and cross-attention blocks (two MLPs per layer).
- Layers reuse the SigLIP `EncoderBlock` (pre-LN, tanh-GELU MLP, biases) with a cacheable
  self-attention; the LM head is not tied to the token embedding.

Text must be right-padded (attention_mask 1 for tokens, a prefix of each row). Not supported:
loading open_clip CoCa checkpoints, dropout. (ITM negatives mined across processes:
`vlmkit.training.itm`.)
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.errors import PromptTooLongError
from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.common.attention import attend, prefix_lm_mask
from vlmkit.models.common.contracts import TextFormat
from vlmkit.models.common.kv_cache import KVCache
from vlmkit.models.itm import ItmHeadConfig
from vlmkit.models.siglip.model import EncoderBlock, SelfAttention, SiglipVisionTower
from vlmkit.models.siglip.two_tower import contrastive_logits, l2_normalize

KV = tuple[torch.Tensor, torch.Tensor]


class CachedSelfAttention(SelfAttention):
    """SigLIP's `SelfAttention` (same parameters and math) with an optional static `KVCache`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, slots: torch.Tensor | None = None):
        """x [B, T, D]; mask [B, 1, T, S]; slots [T] (cache slots, used only with a cache)."""
        if self.cache is None:
            return super().forward(x, mask)
        B, T, D = x.shape
        hd = D // self.num_heads
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, H, T, hd]
        v = self.v_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, H, T, hd]
        k, v = self.cache.update(slots, k, v)  # [B, H, S, hd]
        out = attend(q, k, v, mask, hd**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))  # [B, T, D]


class CrossAttention(nn.Module):
    """Queries x [B, T, D] attend to a context [B, M, Dc]; keys/values come from `project_kv`
    so that a decoder computes them once per image, not once per generated token."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(context_dim, dim)
        self.v_proj = nn.Linear(context_dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def project_kv(self, context: torch.Tensor) -> KV:
        """context [B, M, Dc] -> (k, v), each [B, H, M, hd]."""
        B, M, _ = context.shape
        k = self.k_proj(context).view(B, M, self.num_heads, -1).transpose(1, 2)  # [B, H, M, hd]
        v = self.v_proj(context).view(B, M, self.num_heads, -1).transpose(1, 2)  # [B, H, M, hd]
        return k, v

    def forward(self, x: torch.Tensor, kv: KV) -> torch.Tensor:
        B, T, D = x.shape
        hd = D // self.num_heads
        q = self.q_proj(x).view(B, T, -1, hd).transpose(1, 2)  # [B, H, T, hd]
        out = attend(q, kv[0], kv[1], None, hd**-0.5)  # every query sees every context token
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))  # [B, T, D]


class AttentionalPooler(nn.Module):
    """n learned queries attend over image features: [B, N, Dv] -> [B, n, W], layer-normed.

    As open_clip's AttentionalPooler (LayerNorm on queries and on the features, one
    cross-attention, no MLP), followed by the output LayerNorm that open_clip applies after it.
    """

    def __init__(self, width: int, context_dim: int, n_queries: int, num_heads: int, eps: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, width) * 0.02)
        self.ln_q = nn.LayerNorm(width, eps=eps)
        self.ln_k = nn.LayerNorm(context_dim, eps=eps)
        self.attn = CrossAttention(width, context_dim, num_heads)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.queries)[None].expand(features.shape[0], -1, -1)  # [B, n, W]
        return self.norm(self.attn(q, self.attn.project_kv(self.ln_k(features))))


class DecoderBlock(EncoderBlock):
    """SigLIP `EncoderBlock` with a cacheable self-attention and, in multimodal layers, a
    pre-LN cross-attention between self-attention and MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float, cross: bool):
        super().__init__(dim, num_heads, mlp_dim, eps)
        # Replaces the parent's attention (same parameter names, so tables and inits carry over).
        self.self_attn = CachedSelfAttention(dim, num_heads)
        self.cross_norm = nn.LayerNorm(dim, eps=eps) if cross else None
        self.cross_attn = CrossAttention(dim, dim, num_heads) if cross else None

    def forward(self, x, mask, slots=None, kv: KV | None = None):
        """x [B, T, D]; mask [B, 1, T, S]; slots [T]; kv: this layer's cross (k, v) if multimodal."""
        x = x + self.self_attn(self.layer_norm1(x), mask, slots)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_norm(x), kv)
        return x + self.mlp(self.layer_norm2(x))


@dataclass
class CocaOutput:
    """image_embeds, text_embeds [B, E] (L2-normalised); logits [B, T, V] (caption logits at the
    text positions); fused [B, W] (multimodal CLS feature, for ITM). Kept for re-pairing images
    and texts (ITM negatives): caption_tokens [B, n, W], text_states [B, T+1, W] (unimodal),
    text_mask [B, 1, T+1, T+1]."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    logits: torch.Tensor
    fused: torch.Tensor
    caption_tokens: torch.Tensor
    text_states: torch.Tensor
    text_mask: torch.Tensor


def causal_text_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [B, T] of right-padded text -> [B, 1, T+1, T+1] bool mask for the tokens
    plus the CLS token appended at the end: causal, and no query ever sees a padding key."""
    B, T = attention_mask.shape
    key_valid = torch.cat([attention_mask.bool(), attention_mask.new_ones(B, 1, dtype=torch.bool)], 1)
    no_prefix = torch.zeros_like(key_valid)
    return prefix_lm_mask(key_valid, no_prefix, torch.arange(T + 1, device=attention_mask.device))


class CoCa(nn.Module):
    """Contrastive captioner; see the module docstring for the data flow."""

    def __init__(self, cfg: CocaConfig):
        super().__init__()
        self.cfg = cfg
        W, Dv, H, eps = cfg.width, cfg.vision.hidden_size, cfg.num_heads, cfg.layer_norm_eps
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.contrastive_pooler = AttentionalPooler(W, Dv, 1, H, eps)
        self.caption_pooler = AttentionalPooler(W, Dv, cfg.num_caption_queries, H, eps)
        self.image_proj = nn.Linear(W, cfg.embed_dim, bias=False)
        self.token_embedding = nn.Embedding(cfg.vocab_size, W)
        # Rows 0..context_length-1 for text positions, the last row for the CLS token.
        self.position_embedding = nn.Embedding(cfg.context_length + 1, W)
        self.cls_embedding = nn.Parameter(torch.randn(W) * 0.02)

        def block(cross: bool) -> DecoderBlock:
            return DecoderBlock(W, H, cfg.mlp_dim, eps, cross)

        self.unimodal_layers = nn.ModuleList(block(False) for _ in range(cfg.num_unimodal_layers))
        self.text_norm = nn.LayerNorm(W, eps=eps)
        self.text_proj = nn.Linear(W, cfg.embed_dim, bias=False)
        self.multimodal_layers = nn.ModuleList(block(True) for _ in range(cfg.num_multimodal_layers))
        self.final_norm = nn.LayerNorm(W, eps=eps)
        self.lm_head = nn.Linear(W, cfg.vocab_size, bias=False)
        sigmoid = cfg.contrastive_loss == "sigmoid"
        # Published inits: CLIP's 1/0.07 temperature, or SigLIP's t = 10, b = -10.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(10.0) if sigmoid else math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.full((1,), -10.0)) if sigmoid else None

    # --- image side -----------------------------------------------------------------------------

    def encode_image_all(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] -> (image embeddings [B, E] normalised, caption tokens [B, n, W])."""
        feats = self.vision_tower(pixel_values)  # [B, N, Dv]
        pooled = self.contrastive_pooler(feats)[:, 0]  # [B, W]
        return l2_normalize(self.image_proj(pooled)), self.caption_pooler(feats)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> L2-normalised image embeddings [B, E]."""
        return self.encode_image_all(pixel_values)[0]

    def caption_kv(self, caption_tokens: torch.Tensor) -> list[KV]:
        """caption tokens [B, n, W] -> each multimodal layer's cross-attention (k, v) [B, H, n, hd]."""
        return [layer.cross_attn.project_kv(caption_tokens) for layer in self.multimodal_layers]

    # --- text side ------------------------------------------------------------------------------

    def _check_length(self, T: int) -> None:
        if T > self.cfg.context_length:
            raise PromptTooLongError(f"{T} text tokens exceed CoCa's context length {self.cfg.context_length}")

    def text_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """input_ids [B, T] (right-padded) -> (unimodal states [B, T+1, W] with CLS last, mask)."""
        B, T = input_ids.shape
        self._check_length(T)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:T][None]  # [B, T, W]
        cls = self.cls_embedding + self.position_embedding.weight[-1]  # [W]
        x = torch.cat([x, cls.to(x.dtype).expand(B, 1, -1)], dim=1)  # [B, T+1, W]
        mask = causal_text_mask(attention_mask)  # [B, 1, T+1, T+1]
        for layer in self.unimodal_layers:
            x = layer(x, mask)
        return x, mask

    def text_embedding(self, states: torch.Tensor) -> torch.Tensor:
        """Unimodal states [B, T+1, W] -> L2-normalised text embeddings [B, E] (from CLS)."""
        return l2_normalize(self.text_proj(self.text_norm(states[:, -1])))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> L2-normalised text embeddings [B, E]."""
        return self.text_embedding(self.text_states(input_ids, attention_mask)[0])

    def multimodal(self, states, mask, kvs: list[KV], slots=None) -> torch.Tensor:
        """Unimodal states [B, T, W] -> final-normed multimodal states [B, T, W]."""
        for layer, kv in zip(self.multimodal_layers, kvs):
            states = layer(states, mask, slots, kv)
        return self.final_norm(states)

    # --- both -----------------------------------------------------------------------------------

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> CocaOutput:
        """Images [B, 3, H, W] and their captions [B, T] (BOS ... EOS, right-padded) -> CocaOutput."""
        image_embeds, caption_tokens = self.encode_image_all(pixel_values)
        return self.forward_text(image_embeds, caption_tokens, input_ids, attention_mask)

    def forward_text(self, image_embeds, caption_tokens, input_ids, attention_mask=None) -> CocaOutput:
        """As `forward`, from precomputed image outputs (row i of each pairs with caption i)."""
        states, mask = self.text_states(input_ids, attention_mask)
        fused = self.multimodal(states, mask, self.caption_kv(caption_tokens))  # [B, T+1, W]
        logits = self.lm_head(fused[:, :-1])  # [B, T, V]; the CLS row predicts nothing
        text_embeds = self.text_embedding(states)
        return CocaOutput(image_embeds, text_embeds, logits, fused[:, -1], caption_tokens, states, mask)

    def fuse(self, caption_tokens: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fused feature of M (image, text) pairs: caption tokens [M, n, W], unimodal states
        [M, T+1, W] and their mask [M, 1, T+1, T+1] -> final-normed multimodal CLS state [M, W]."""
        return self.multimodal(states, mask, self.caption_kv(caption_tokens))[:, -1]

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised [Bi, E], [Bt, E] -> contrastive logits_per_image [Bi, Bt]."""
        return contrastive_logits(image_embeds, text_embeds, self.logit_scale, self.logit_bias)

    # --- what the training engine asks of an image-text model (vlmkit.training.contrastive) ---

    @property
    def loss_weights(self) -> dict[str, float]:
        """{"contrastive": lambda_Con, "caption": lambda_Cap} from the config."""
        return {"contrastive": self.cfg.contrastive_weight, "caption": self.cfg.caption_weight}

    @property
    def loss_only_parts(self) -> dict[str, tuple[str, ...]]:
        """Top-level parts that feed only one loss term (frozen when its weight is 0)."""
        return {"caption": ("caption_pooler", "multimodal_layers", "final_norm", "lm_head"),
                "contrastive": ("contrastive_pooler", "image_proj", "text_norm", "text_proj", "cls_embedding",
                                "logit_scale", "logit_bias")}

    @property
    def text_format(self) -> TextFormat:
        """BOS caption EOS, padded to the longest row (CoCa reads a CLS token of its own)."""
        return TextFormat(max_len=self.cfg.context_length, bos=True, pad_to_max=False)

    @property
    def itm_head_config(self) -> ItmHeadConfig:
        """ITM reads the multimodal decoder's CLS state [B, W] (`fuse`, `CocaOutput.fused`)."""
        return ItmHeadConfig(fusion="multimodal", dim=self.cfg.width)

    # --- cached decoding (see vlmkit.generation.coca) ---------------------------------------------

    def setup_caches(self, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        """Allocate a static KV cache of `max_len` slots in every self-attention layer."""
        c = self.cfg
        for layer in [*self.unimodal_layers, *self.multimodal_layers]:
            layer.self_attn.cache = KVCache(batch_size, c.num_heads, max_len, c.head_dim, dtype, device)

    def clear_caches(self) -> None:
        for layer in [*self.unimodal_layers, *self.multimodal_layers]:
            layer.self_attn.cache = None

    def decode_step(self, input_ids: torch.Tensor, slots: torch.Tensor, kvs: list[KV]) -> torch.Tensor:
        """Cached step: ids [B, T] at cache slots [T] (= text positions) -> logits [B, T, V].

        Needs `setup_caches`; no CLS token (captioning never reads it, and causality means the
        caption rows do not depend on it).
        """
        B, T = input_ids.shape
        S = self._cache_len()
        x = self.token_embedding(input_ids) + self.position_embedding(slots)[None]  # [B, T, W]
        every = torch.ones(B, S, dtype=torch.bool, device=x.device)  # causality hides unwritten slots
        mask = prefix_lm_mask(every, torch.zeros_like(every), slots)  # [B, 1, T, S]
        for layer in self.unimodal_layers:
            x = layer(x, mask, slots)
        return self.lm_head(self.multimodal(x, mask, kvs, slots))

    def _cache_len(self) -> int:
        for layer in [*self.unimodal_layers, *self.multimodal_layers]:
            if layer.self_attn.cache is not None:
                return layer.self_attn.cache.max_len
        raise RuntimeError("decode_step needs setup_caches() first")
