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
  a row of a batch-8 call equals the same row alone, bit for bit.
Activation rounding (half a step of 1/254 of each row's max) changes the logits more than
weight-only int8 does; `vlmkit.generation.quant_report` measures it.

Measured on a 2-core AMX Xeon, PyTorch 2.13, bf16 activations, 16384 x 2048 weight, 2 threads
(benchmarks/bench_quant_kernels.py, results in benchmarks/results/quant-kernels-cpu.json): the
int GEMM takes ~1.2 ms at M = 1 and 8 and ~1.6 ms at M = 32 (bf16 2.3 / 2.9 / 4.4 ms, the
weight-only int8 kernel 0.9 / 3.0 / 12.7 ms); the activation quantisation adds ~30 us per call.
For prefill-sized M the s8 GEMM is slower than casting the weight to the activation dtype
(M = 256: 107 ms against 74 ms; bf16 24 ms), so beyond `DYNAMIC_MAX_ROWS` rows the layer runs
the weight-only path of `int8_matmul` (prefill logits are weight-only int8 ones).
"""

import torch
from torch import nn

from vlmkit.generation.quantize import Int8Embedding, Int8Linear, int8_matmul, replace_modules

DYNAMIC_MAX_ROWS = 64


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, in] float -> (a [M, in] int8, sx [M, 1] float32), x2 ~= a * sx, symmetric per row."""
    xf = x2.float()
    sx = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0  # [M, 1]; clamp: all-zero rows
    return torch.round(xf / sx).to(torch.int8), sx


def dynamic_int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] float, q [out, in] int8, scale [out] -> [..., out] in x's dtype (see the module
    docstring; more than `DYNAMIC_MAX_ROWS` rows, or a device without the int GEMM: `int8_matmul`)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    if x2.shape[0] > DYNAMIC_MAX_ROWS or x2.device.type != "cpu":
        return int8_matmul(x, q, scale)
    a, sx = quantize_rows(x2)
    # q.T is a transposed view ([in, out], column-major): oneDNN reads it as stored; a contiguous
    # [in, out] copy measured 3-10x slower (another GEMM kernel).
    acc = torch._int_mm(a, q.T)  # [M, out] int32, exact
    y = (acc * sx) * scale.float()  # [M, out] float32
    return y.to(x.dtype).reshape(*lead, q.shape[0])  # [..., out]


class DynamicInt8Linear(Int8Linear):
    """`Int8Linear` (same buffers) whose forward quantises its input rows too (W8A8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        y = dynamic_int8_matmul(x, self.weight_int8, self.weight_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class DynamicInt8Embedding(Int8Embedding):
    """`Int8Embedding` (same buffers, same rows) whose LM head runs W8A8."""

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> [..., V]."""
        return dynamic_int8_matmul(h, self.weight_int8, self.weight_scale)


def quantize_int8_dynamic(model: nn.Module, skip: tuple[str, ...] = (), min_features: int = 16) -> nn.Module:
    """Replace `model`'s Linears (>= `min_features` inputs) and tied decoder embeddings by their
    W8A8 versions, in place (as `quantize_int8`, whose per-channel weights they hold)."""
    return replace_modules(model, lambda m: DynamicInt8Linear(m) if m.in_features >= min_features else None,
                           DynamicInt8Embedding, skip)
