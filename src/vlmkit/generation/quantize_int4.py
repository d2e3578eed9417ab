"""Int4 weight-only quantisation, group-wise and asymmetric (as gpt-fast and torchao do it).

Each row of a weight W [out, in] is cut into groups of `group_size` input features; each group g
gets a scale s = (max - min) / 15 and a zero z = min + 8 s, and its entries become 4-bit codes
c = round((w - min) / s) in 0..15, so that w ~= (c - 8) * s + z. This is the convention of
PyTorch's `_weight_int4pack_mm_for_cpu` kernel, which takes the codes packed into its own
(CPU-capability-specific) tile layout and the scales and zeros as one [in / g, out, 2] tensor.

Storage (what `state_dict` and a saved folder hold, portable across machines): `weight_int4`
[out, in / 2] uint8, two codes per byte (low nibble = even input feature), and
`scales_and_zeros` [in / g, out, 2] in the model dtype. The kernel layout is rebuilt from the
portable codes when the module is built or loaded (a non-persistent buffer), deterministically,
so a reloaded model gives bit-identical logits.

Error: half a step of a 16-level grid over each group's range, i.e. |w - w_hat| <= (max - min)/30
per group; smaller groups are more exact and store more scales (g=32: 4.5 bits per weight with
bf16 scales and zeros, g=128: 4.125). See `vlmkit.generation.quant_report` for measured logit
errors.

Paths: on CPU the fused kernel runs for any activation dtype and any M (it reads 0.5 bytes per
weight, a quarter of bf16); elsewhere (CUDA, MPS) the weight is dequantised per call into the
activation dtype. The output count is padded to the kernel's multiple of 16 with zero rows
(the padded outputs are sliced off), so odd vocabularies (the bundled model's 1666) work.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.generation.quantize import chunk_rows, replace_modules

GROUP_SIZES = (32, 64, 128)
_N_MULTIPLE = 16  # the CPU kernel's requirement on the output count


def quantize_int4_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (codes [out, in] uint8 in 0..15, scales [out, in/g], zeros [out, in/g]) float32.

    w ~= (codes - 8) * scale + zero within each group of `group_size` consecutive input features.
    """
    out_f, in_f = weight.shape
    if in_f % group_size:
        raise ConfigError(f"int4 group size {group_size} does not divide the {in_f} input features")
    codes = torch.empty(weight.shape, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(out_f, in_f // group_size, dtype=torch.float32, device=weight.device)
    zeros = torch.empty_like(scales)
    n = chunk_rows(weight)
    for r in range(0, out_f, n):  # row chunks: bounded float32 temporaries for huge tables
        w = weight[r:r + n].detach().float().reshape(-1, in_f // group_size, group_size)  # [rows, G, g]
        lo, hi = w.amin(-1), w.amax(-1)  # [rows, G]
        s = (hi - lo).clamp(min=1e-6) / 15  # clamp: constant groups
        codes[r:r + n] = torch.round((w - lo[..., None]) / s[..., None]).clamp(0, 15).reshape(-1, in_f).to(torch.uint8)
        scales[r:r + n], zeros[r:r + n] = s, lo + 8 * s
    return codes, scales, zeros


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes [out, in] uint8 (0..15) -> [out, in/2] uint8, low nibble = even column (portable)."""
    return codes[:, ::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[out, in/2] uint8 -> codes [out, in] uint8; inverse of `pack_nibbles`."""
    return torch.stack([packed & 15, packed >> 4], -1).flatten(-2)  # [out, in/2, 2] -> [out, in]


def pack_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype=torch.bfloat16):
    """(codes [N, K], scales / zeros [N, K/g]) -> (kernel-layout weight, scales_and_zeros [K/g, N', 2]),
    N padded to a multiple of 16 with zero rows (codes 8, scale 0, zero 0: they output 0)."""
    pad = -codes.shape[0] % _N_MULTIPLE
    if pad:
        codes = F.pad(codes, (0, 0, 0, pad), value=8)
        scales, zeros = F.pad(scales, (0, 0, 0, pad)), F.pad(zeros, (0, 0, 0, pad))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).cpu(), 1)
    sz = torch.stack([scales, zeros], -1).transpose(0, 1).contiguous().to(dtype)  # [K/g, N', 2]
    return packed.to(codes.device), sz


def dequantize_int4(codes: torch.Tensor, sz: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [N, K] uint8, sz [K/g, N, 2] -> weight [N, K] in `dtype` ((c - 8) * s + z per group)."""
    N, K = codes.shape
    g = K // sz.shape[0]
    sz = sz.transpose(0, 1).to(dtype)  # [N, K/g, 2]
    c = codes.view(N, K // g, g).to(dtype) - 8  # [N, G, g]
    return (c * sz[..., :1] + sz[..., 1:]).view(N, K)


class Int4Linear(nn.Module):
    """Drop-in for an inference `nn.Linear` with group-wise int4 weights (see module docstring).

    Buffers: weight_int4 [out, in/2] uint8, scales_and_zeros [in/g, out, 2] and bias [out] (or
    None) in the original weight dtype; `_packed` (not saved) is the CPU kernel's layout.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, dtype: torch.dtype,
                 bias: torch.Tensor | None = None, device=None):
        super().__init__()
        if group_size not in GROUP_SIZES:
            raise ConfigError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_int4", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2, dtype=dtype,
                                                             device=device))
        self.register_buffer("bias", bias)
        self.register_buffer("_packed", None, persistent=False)
        self.register_buffer("_sz_padded", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.repack())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> "Int4Linear":
        w = linear.weight
        bias = None if linear.bias is None else linear.bias.detach().clone()
        m = cls(linear.in_features, linear.out_features, group_size, w.dtype, bias, w.device)
        codes, scales, zeros = quantize_int4_groups(w, group_size)
        m.weight_int4.copy_(pack_nibbles(codes))
        m.scales_and_zeros.copy_(torch.stack([scales, zeros], -1).transpose(0, 1))
        m.repack()
        return m

    def repack(self) -> None:
        """Rebuild the kernel layout from the stored codes (after construction or loading; not on
        the meta device, where a folder's structure is built before its tensors are assigned)."""
        if self.weight_int4.is_meta:
            return
        sz = self.scales_and_zeros.transpose(0, 1)  # [out, in/g, 2]
        self._packed, self._sz_padded = pack_int4(unpack_nibbles(self.weight_int4), sz[..., 0], sz[..., 1],
                                                  self.scales_and_zeros.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        y = int4_matmul(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


def int4_matmul(x: torch.Tensor, m: "Int4Linear | Int4Embedding") -> torch.Tensor:
    """x [..., in] -> x @ W_hat.T [..., out] in x's dtype, W_hat the module's dequantised weight."""
    lead, N = x.shape[:-1], m.scales_and_zeros.shape[1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    if x2.device.type == "cpu":
        sz = m._sz_padded if m._sz_padded.dtype == x.dtype else m._sz_padded.to(x.dtype)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), m._packed, m.group_size, sz)[:, :N]
    else:  # no fused kernel for this device here: dequantise per call
        y = F.linear(x2, dequantize_int4(unpack_nibbles(m.weight_int4), m.scales_and_zeros, x.dtype))
    return y.reshape(*lead, N)  # [..., out]


class Int4Embedding(nn.Module):
    """Drop-in for a tied `nn.Embedding`: rows looked up and dequantised, and `linear(h)` for the
    LM head through the same int4 kernel as Int4Linear. Buffers as Int4Linear's."""

    def __init__(self, num: int, dim: int, group_size: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.group_size = group_size
        self.register_buffer("weight_int4", torch.zeros(num, dim // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_and_zeros", torch.zeros(dim // group_size, num, 2, dtype=dtype, device=device))
        self.register_buffer("_packed", None, persistent=False)
        self.register_buffer("_sz_padded", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module.repack())

    repack = Int4Linear.repack

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, group_size: int) -> "Int4Embedding":
        w = emb.weight
        m = cls(w.shape[0], w.shape[1], group_size, w.dtype, w.device)
        codes, scales, zeros = quantize_int4_groups(w, group_size)
        m.weight_int4.copy_(pack_nibbles(codes))
        m.scales_and_zeros.copy_(torch.stack([scales, zeros], -1).transpose(0, 1))
        m.repack()
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] int64 -> [..., D] in the original embedding dtype."""
        flat = ids.reshape(-1)
        sz = self.scales_and_zeros[:, flat]  # [D/g, n, 2]; its dtype is the model's (also after loading)
        rows = dequantize_int4(unpack_nibbles(self.weight_int4[flat]), sz, sz.dtype)  # [n, D]
        return rows.view(*ids.shape, -1)

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> [..., V]: the tied LM head."""
        return int4_matmul(h, self)


def quantize_int4(model: nn.Module, group_size: int = 64, skip: tuple[str, ...] = ("vision_tower",),
                  embeddings: bool = True) -> nn.Module:
    """Replace the model's `nn.Linear` layers (and tied decoder embeddings) by group-wise int4
    versions, in place; as `vlmkit.generation.quantize.quantize_int8`. Linears whose input
    features `group_size` does not divide are kept in float."""
    if group_size not in GROUP_SIZES:
        raise ConfigError(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")

    def linear(m: nn.Linear) -> Int4Linear | None:
        return Int4Linear.from_linear(m, group_size) if m.in_features % group_size == 0 else None

    def embedding(m: nn.Embedding) -> Int4Embedding | None:
        return Int4Embedding.from_embedding(m, group_size) if m.embedding_dim % group_size == 0 else None

    return replace_modules(model, linear, embedding if embeddings else None, skip)
