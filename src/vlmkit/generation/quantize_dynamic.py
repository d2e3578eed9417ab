"""Int8 weights with dynamic int8 activations ("int8-dyn", W8A8): an integer GEMM for decode.

The weights are those of `vlmkit.generation.quantize` (int8 q [out, in], one scale s per output
channel, the same buffers and files). At each call every activation row x_m [in] is quantised
symmetrically, x_m ~= a_m * sx_m with sx_m = max|x_m| / 127, and

    y[m, o] = (sum_i a_m[i] * q[o, i]) * sx_m * s_o

with the sum in exact int32 arithmetic (`torch._int_mm`: oneDNN's s8 x s8 -> s32 GEMM with
AVX512-VNNI / AMX-int8 on x86). Two consequences:
- The weight is read once for all rows (the weight-only `_weight_int8pack_mm` walks it once per
  row, so at batch 8 it is slower than a bf16 matmul), at a quarter (fp32) / half (bf16) of the
  float bytes: decode is faster than float at batch 1 *and* batch 8.
- Rows are independent (the per-row scale and the integer sum do not depend on the other rows):
  a row of a W8A8 call with 8 rows equals the same row in any other W8A8 call, bit for bit.
Activation rounding (half a step of 1/254 of each row's max) changes the logits more than
weight-only int8 does; `vlmkit.generation.quant_report` measures it.

Rows: at M = 1 (batch-1 decode) the weight-only fused GEMV `_weight_int8pack_mm` (bf16 / fp16
activations) is faster than the int GEMM (the same int8 bytes, no activation rounding, no extra
kernels), so a single such row takes the weight-only path of `int8_matmul`, as do more than `DYNAMIC_MAX_ROWS` rows
(prefill: there the s8 GEMM is slower than casting the weight to bf16 for oneDNN's bf16 GEMM).
So batch-1 decode gives exactly the "int8" scheme's logits, and a row of a batched decode step
differs from the same row alone by the activation rounding only (`always_dynamic` makes every
call W8A8, for scoring). With `--prepack` the layers' weights are stored in oneDNN's int8 blocked
layout (`vlmkit.generation.quantize_packed`): W8A8 at every row count, the bits of
`always_dynamic`, without the per-call reorder of the weight. Measured numbers:
benchmarks/results/quant-kernels-cpu.json (per matmul) and quant-decode-cpu.json (decode); see
benchmarks/README.md.
"""

import torch
from torch import nn

from vlmkit.generation.quantize import Int8Embedding, Int8Linear, _use_int8pack, int8_matmul, replace_modules
from vlmkit.kernels import quantize_rows  # noqa: F401 - the activation quantiser, also imported from here

DYNAMIC_MIN_ROWS, DYNAMIC_MAX_ROWS = 2, 64


def dynamic_int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                        rows: tuple[int, int | None] = (DYNAMIC_MIN_ROWS, DYNAMIC_MAX_ROWS)) -> torch.Tensor:
    """x [..., in] float, q [out, in] int8, scale [out] -> [..., out] in x's dtype (see the module
    docstring): W8A8 on CPU for rows[0] <= M <= rows[1] (None: no limit) and for fewer rows where
    `int8_matmul` would cast the weight (fp32 activations), else `int8_matmul`."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    lo, hi = rows
    few, many = x2.shape[0] < lo and _use_int8pack(x2), hi is not None and x2.shape[0] > hi
    if few or many or x2.device.type != "cpu":
        return int8_matmul(x, q, scale)
    a, sx = quantize_rows(x2)
    # q.T is a transposed view ([in, out], column-major): oneDNN reads it as stored; a contiguous
    # [in, out] copy measured 3-10x slower (another GEMM kernel).
    acc = torch._int_mm(a, q.T)  # [M, out] int32, exact
    y = (acc * sx) * scale.float()  # [M, out] float32
    return y.to(x.dtype).reshape(*lead, q.shape[0])  # [..., out]


class DynamicInt8Linear(Int8Linear):
    """`Int8Linear` (same buffers) whose forward quantises its input rows too (W8A8), up to
    the row counts `rows` (see `dynamic_int8_matmul`; `always_dynamic`: at any row count)."""

    rows: tuple[int, int | None] = (DYNAMIC_MIN_ROWS, DYNAMIC_MAX_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        y = dynamic_int8_matmul(x, self.weight_int8, self.weight_scale, self.rows)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class DynamicInt8Embedding(Int8Embedding):
    """`Int8Embedding` (same buffers, same rows) whose LM head runs W8A8 (as `DynamicInt8Linear`)."""

    rows: tuple[int, int | None] = (DYNAMIC_MIN_ROWS, DYNAMIC_MAX_ROWS)

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> [..., V]."""
        return dynamic_int8_matmul(h, self.weight_int8, self.weight_scale, self.rows)


def always_dynamic(model: nn.Module) -> nn.Module:
    """Let every W8A8 module of `model` quantise its activations at any row count (the numerics of
    batched decode also for one row and for long inputs: what `quant_report` scores). In place."""
    for m in model.modules():
        if isinstance(m, (DynamicInt8Linear, DynamicInt8Embedding)):
            m.rows = (1, None)
    return model


def quantize_int8_dynamic(model: nn.Module, skip: tuple[str, ...] = (), min_features: int = 16) -> nn.Module:
    """Replace `model`'s Linears (>= `min_features` inputs) and tied decoder embeddings by their
    W8A8 versions, in place (as `quantize_int8`, whose per-channel weights they hold)."""
    return replace_modules(model, lambda m: DynamicInt8Linear(m) if m.in_features >= min_features else None,
                           DynamicInt8Embedding, skip)
