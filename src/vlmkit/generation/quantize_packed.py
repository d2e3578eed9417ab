"""W8A8 ("int8-dyn") layers for CPU decoding whose int8 matmul skips the per-call weight reorder:
vlmkit's own kernel where it builds (AVX-512 VNNI), else oneDNN's prepacked layout.

Axes: M rows (batch x tokens), K input features, N output features.

vlmkit's kernel (`vlmkit/kernels/int8_linear.cpp`, `_KernelInt8`) reads the plain [N, K] int8
weight for up to 16 rows (decode), quantises the activations and applies the scales itself, and
streams the weight faster than oneDNN does (measured with the weights streamed from memory: a
16384 x 2048 weight at 1 / 8 rows in 1.7 / 2.0 ms against oneDNN's 2.5 / 2.5 ms); more rows
(prefill) go through its AMX kernel on the same plain weight (`torch._int_mm` without AMX). It
keeps one copy of a tied table. Where it does not build
or run, the layers use oneDNN's layout as described below (`_PackedInt8`); both give the same bits.

`DynamicInt8Linear` calls `torch._int_mm(a, q.T)`, and oneDNN copies the plain [N, K] int8 weight
into its blocked (VNNI) layout on every call, as it does for a plain bf16 weight (see
`vlmkit.generation.prepack`). Storing the weight once in that layout
(`torch.ops.onednn.qlinear_prepack`, the layout PyTorch's own x86 quantisation flow uses) and
calling `onednn.qlinear_pointwise` reads only the int8 bytes. Measured per matmul (2 threads,
AMX CPU, bf16 input): the 257216 x 2048 LM head at M = 8 takes 28 ms against 62 ms for a bf16
matmul, 54 ms for `_int_mm` and 102 ms for the weight-only `_weight_int8pack_mm` (which walks the
weight once per row); at M = 1 26 ms against 58 / 49 / 41 ms.

Exact by construction, and checked: the kernel gets the per-row int8 codes with activation scale
1 and weight scales 1, so it returns float(sum_i a[m, i] * q[n, i]), the same float32 value as
`float(_int_mm(a, q.T))`; the per-row and per-channel scales are then applied in
`dynamic_int8_matmul`'s order. So a packed layer gives the bits of `DynamicInt8Linear` with
`rows = (1, None)` (`always_dynamic`: W8A8 at every row count) and does not keep the plain weight:
one row (batch-1 decode) and prefill also run W8A8, whose logit error `quant_report` measures.
The activation codes go in as uint8 with zero point 128 (codes + 128; oneDNN subtracts the zero
point's share exactly, in int32): with int8 codes oneDNN picked slower kernels, measured with the
weights streamed from memory (24 distinct weights, beyond the 480 MB L3): a 16384 x 2048 weight at
M = 8 took 3.2 ms with int8 codes, 2.5 ms with uint8, 3.7 ms for `_int_mm` and 4.3 ms for a plain
bf16 matmul; at one row a 256 x 2048 weight took 6.9 ms with int8 codes against 0.1 ms.

The tied LM head keeps its plain int8 table for the embedding lookup as well as the packed copy
(V x D more bytes). The state dict holds the plain layout (`packed.to_dense()` returns q.T
exactly), so a packed model saves to the same files as an unpacked one. Inference only; it
compiles only with frozen weights (`compile_decode("max-autotune")`: inductor's lowering of the op
asserts the packed weight is a graph constant), where inductor may pick its own AMX int8 template
per shape (tokens equal eager; bf16 logits within a few bf16 steps).
"""

import torch
from torch import nn

from vlmkit.generation.quantize_dynamic import (DynamicInt8Embedding, DynamicInt8Linear, dynamic_int8_matmul,
                                                quantize_rows)
from vlmkit.generation.quantize import linear_repr
from vlmkit.kernels import KERNEL_MAX_ROWS, amx_from_rows, int8_linear_amx, int8_linear_small, load_int8_kernels


def packed_int8_available(device: torch.device) -> bool:
    """Whether this torch build has oneDNN's int8 linear here (CPU with oneDNN)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise"))


class _PackedInt8(nn.Module):
    """The packed weight of an [N, K] int8 table and its matmul. The kernel's operands are
    (non-persistent) buffers so that a frozen compile (`compile_decode("max-autotune")`) sees them
    as constants, which inductor's lowering of the op requires."""

    def __init__(self, q: torch.Tensor):
        super().__init__()
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(q, None), persistent=False)  # opaque, K x N
        self.register_buffer("ones", torch.ones(q.shape[0]), persistent=False)  # [N] weight scales of the kernel
        self.register_buffer("zeros", torch.zeros(q.shape[0], dtype=torch.long), persistent=False)  # [N] zero points

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x [..., K] float, scale [N] -> [..., N] in x's dtype, bit-identical to always-dynamic W8A8."""
        lead, n = x.shape[:-1], self.ones.shape[0]
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        a, sx = quantize_rows(x2)
        a = (a.to(torch.int16) + 128).to(torch.uint8)  # the same codes, shifted (see the docstring)
        acc = torch.ops.onednn.qlinear_pointwise(a, 1.0, 128, self.packed, self.ones, self.zeros, None,
                                                 1.0, 0, torch.float32, "none", [], "")  # [M, N] fp32
        y = acc.mul_(sx).mul_(scale.float())  # dynamic_int8_matmul's order, in place on the fresh output
        return y.to(x.dtype).reshape(*lead, n)  # [..., N]

    def plain(self) -> torch.Tensor:
        """The int8 weight [N, K] in the plain layout."""
        return self.packed.to_dense().T.contiguous()


class _KernelInt8(nn.Module):
    """The plain [N, K] int8 table and its matmul through vlmkit's own kernels
    (`vlmkit/kernels/int8_linear.cpp`): AMX where the CPU has it and it is the faster one
    (`amx_from_rows`: prefill, and decode from 6 rows on large weights), else VNNI up to
    `KERNEL_MAX_ROWS` rows, else `torch._int_mm`: integer sums either
    way, so always-dynamic W8A8's bits at every row count. The weight is not copied (a tied table
    is shared with the lookup); `wsum` (q summed over K) is the VNNI kernel's zero-point term and
    `scale32` the channel scales in float32, as the unpacked layer applies them."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("q", q, persistent=False)  # [N, K] int8, the caller's tensor
        self.register_buffer("wsum", q.sum(dim=1, dtype=torch.int32), persistent=False)  # [N]
        self.register_buffer("scale32", scale.float(), persistent=False)  # [N]
        self.amx_from = amx_from_rows(*q.shape)  # rows from which the AMX kernel serves (None: never)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x [..., K] float, scale [N] -> [..., N] in x's dtype."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])  # [M, K]
        n = self.q.shape[0]
        if self.amx_from is not None and x2.shape[0] >= self.amx_from:
            y = int8_linear_amx(x2, self.q, self.scale32)
        elif x2.shape[0] <= KERNEL_MAX_ROWS:
            y = int8_linear_small(x2, self.q, self.wsum, self.scale32)
        else:
            return dynamic_int8_matmul(x, self.q, scale, (1, None))
        return y.reshape(*lead, n)  # [..., N]

    def plain(self) -> torch.Tensor:
        return self.q


def _int8_matmul(q: torch.Tensor, scale: torch.Tensor) -> nn.Module:
    """vlmkit's kernels where they build and run here (an AVX-512 VNNI CPU), else oneDNN's packed
    layout; both exact (timings in the module docstring)."""
    if q.device.type == "cpu" and load_int8_kernels():
        return _KernelInt8(q, scale)
    return _PackedInt8(q)


class PackedInt8Linear(nn.Module):
    """Inference-only `DynamicInt8Linear` (same state dict) whose matmul skips the weight reorder
    (vlmkit's kernel, or oneDNN's prepacked layout where the kernel does not run).

    x [..., K] float -> [..., N] in x's dtype; W8A8 at every row count.
    """

    def __init__(self, m: DynamicInt8Linear):
        super().__init__()
        self.in_features, self.out_features = m.in_features, m.out_features
        self.register_buffer("weight_scale", m.weight_scale)
        self.register_buffer("bias", m.bias)
        self.int8 = _int8_matmul(m.weight_int8, m.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.int8(x, self.weight_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The plain layout under DynamicInt8Linear's keys, so saving writes the same files.
        destination[prefix + "weight_int8"] = self.int8.plain()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        return linear_repr(self)


class PackedInt8Embedding(DynamicInt8Embedding):
    """`DynamicInt8Embedding` (same buffers; the plain table serves the lookup) whose LM head runs
    through vlmkit's kernel on that same table, or on a prepacked copy where the kernel does not
    run: h [..., D] -> [..., V], W8A8 at every row count."""

    def __init__(self, emb: DynamicInt8Embedding):
        nn.Module.__init__(self)
        self.register_buffer("weight_int8", emb.weight_int8)
        self.register_buffer("weight_scale", emb.weight_scale)
        self.int8 = _int8_matmul(emb.weight_int8, emb.weight_scale)  # shares the table with vlmkit's kernel

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        return self.int8(h, self.weight_scale)


PACKED_INT8 = {DynamicInt8Linear: PackedInt8Linear, DynamicInt8Embedding: PackedInt8Embedding}  # what packs


def pack_int8(module: nn.Module) -> nn.Module | None:
    """The packed version of a W8A8 module (None for any other module or where oneDNN's int8
    linear is unavailable)."""
    kind = PACKED_INT8.get(type(module))
    if kind is None or not packed_int8_available(module.weight_int8.device):
        return None
    return kind(module)


def packs_int8_exactly(plain: nn.Module, packed: nn.Module, rows: tuple[int, ...] = (1, 2, 8, 64),
                       seed: int = 0) -> bool:
    """Whether `packed` (from `pack_int8(plain)`) gives always-dynamic W8A8's bits at these row
    counts, on seeded inputs in the scales' dtype: exact by construction, checked anyway."""
    linear = plain.linear if isinstance(plain, DynamicInt8Embedding) else plain
    run = packed.linear if isinstance(packed, PackedInt8Embedding) else packed
    gen = torch.Generator().manual_seed(seed)
    dtype, width = plain.weight_scale.dtype, plain.weight_int8.shape[1]
    saved, plain.rows = plain.rows, (1, None)
    try:
        with torch.inference_mode():
            return all(torch.equal(run(x), linear(x)) for x in
                       (torch.randn(m, width, generator=gen).to(dtype) for m in rows))
    finally:
        plain.rows = saved
