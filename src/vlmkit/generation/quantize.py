"""Int8 weight-only quantisation, applied to a loaded model from outside (no model code changes).

Each selected `nn.Linear` weight W [out, in] becomes int8 values q and one scale per output
channel, s = max|W[o, :]| / 127, so W ~= q * s[:, None]. Activations stay in the model dtype;
y = (x @ q.T) * s, which equals x @ (q * s).T exactly, so the weight is never materialised in
full precision. Decoding is memory-bound (every weight is read once per token), so halving (bf16)
or quartering (fp32) the bytes read is what makes it faster; prefill is compute-bound and gains
little.

Which kernel at which row count M (benchmarks/bench_quant_kernels.py: a 16384 x 2048 weight,
bf16 activations, 2 threads, AMX CPU, PyTorch 2.13, best of 5, load average 1.0 -> 2.1; ms):

    M    bf16   int8pack  int8cast  int8tile  int8 compiled  int4 g32  int4 g64  int4 g128
    1    2.10     0.85     23.6      9.8       76 (cast)      0.83      0.77      0.73
    8    2.18     2.87     25.3      9.9       42 (cast)      6.98      7.70      7.58
    16   7.99    16.0      56.9     40.5       85 (cast)     18.4      26.3      29.6
    32   16.9    32.8      46.6     25.3       47 (cast)     25.9      24.0      24.2
    64   15.9    52.6      56.5      248       81 (cast)     69.8      70.0      70.4

(int8pack = `torch._weight_int8pack_mm`; int8cast = F.linear(x, q.to(bf16)) * s; int8tile = the
same into a reused 512-row bf16 tile; "int8 compiled" = torch.compile of the cast expression,
which inductor does not fuse into the GEMM; int4 = `_weight_int4pack_mm_for_cpu`. M = 2 was
disturbed by other processes in that run and is left out; later runs at load 5-7 are in
benchmarks/results/quant-kernels-cpu.json.) Eagerly, aten's fused kernels win at M <= 2 (they
read a half / a quarter of bf16's bytes) but walk the weight once per row, so from M = 8 on the
bf16 AMX matmul is faster than every eager low-bit path.
Inductor has C++ GEMM templates for both ops that read the weight once for all rows: on a module
that owns the weights, compiled with freezing + max-autotune, the int8 template measured 1.21 ms
at M = 8 against 2.74 ms for bf16 (load 1.8), the int4 AMX template 2.5 ms against aten's 3.2 ms.
Compiling the decode step with `torch.compile(options={"freezing": True, ...})` still lowered every
projection to aten's `_weight_int8pack_mm`: dynamo decides whether weights become graph constants
from the global inductor config at trace time, so they stayed graph inputs and the templates were
never offered. `compile_decode("max-autotune")` (`vlmkit.generation.compile`) sets it globally
around the step and reaches them. Eagerly, int8pack serves up to `INT8PACK_MAX_ROWS` rows and the
cast beyond (prefill); int8 at batch >= 8 is slower than bf16 (benchmarks/bench_quant.py), except
on a CPU with AMX, where vlmkit's kernel (`vlmkit.kernels.int8_weight_only`: each activation row
as three int8 rows, float32's precision, through the AMX int8 loop that streams the weight once)
serves 1-64 rows on weights at least 2048 wide: 16384 x 2048 at 8 rows 2.23 ms against int8pack's
6.55 and bf16's 3.49 (docs/performance.md). The
"int8-dyn" scheme (`quantize_dynamic`: the same weights, activations quantised per row too, an
int8 x int8 GEMM that reads the weight once for all rows) is faster than bf16 at batch 8.
"""

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.kernels import int8_weight_only, weight_only_suits
from vlmkit.models.common.decoder import Decoder

_HAS_INT8PACK = hasattr(torch, "_weight_int8pack_mm")
INT8PACK_MAX_ROWS = 32
CAST_BLOCK = 1 << 22  # weight elements cast per block on the cast path (8 MB in bf16)


CHUNK_ELEMENTS = 1 << 21  # weights quantised per step: 8 MB float32 temporaries


def chunk_rows(weight: torch.Tensor) -> int:
    """Rows of `weight` [out, in] quantised per step (the result does not depend on it: rows are
    quantised independently)."""
    return max(1, CHUNK_ELEMENTS // max(1, weight.shape[-1]))


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (q [out, in] int8, scale [out] float32), weight ~= q * scale[:, None]."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)  # [out]
    # Row chunks keep the float32 temporaries small (a 257216 x 2048 table would need 2 GB at once;
    # a few live at a time, so their size is most of what quantising while loading adds to the peak).
    n = chunk_rows(weight)
    for start in range(0, weight.shape[0], n):
        w = weight[start:start + n].detach().float()  # [rows, in]
        s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [rows]; clamp: all-zero rows
        q[start:start + n] = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
        scale[start:start + n] = s
    return q, scale


def _use_int8pack(x2: torch.Tensor) -> bool:
    """Whether to use the fused CPU kernel for x2 [M, in].

    Measured (PyTorch 2.13, AMX CPU, 1 thread, 16384 x 2048 weight, bf16 activations): 1-2 rows
    1.5-3x faster than a bf16 matmul; 8 rows 1.6x slower than bf16 but 5x faster than casting the
    int8 weight (~40 ms: the cast runs at ~1 G elements/s); the two meet near 48 rows, and for
    prefill-sized M the kernel is 5-10x slower than the cast. With fp32 activations it is 3-40x
    slower than fp32 matmul, so fp32 always casts."""
    return (_HAS_INT8PACK and x2.device.type == "cpu" and x2.dtype in (torch.bfloat16, torch.float16)
            and x2.shape[0] <= INT8PACK_MAX_ROWS)


def _use_weight_only_kernel(x2: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether vlmkit's AMX kernel serves x2 [M, in] @ q.T (`vlmkit.kernels.int8_weight_only`):
    eagerly, on a CPU with AMX, bf16 / fp16 activations, shapes it suits. Compiled graphs keep
    int8pack, whose lowering inductor may replace with its own AMX template (see above)."""
    return (x2.device.type == "cpu" and x2.dtype in (torch.bfloat16, torch.float16) and q.is_contiguous()
            and not torch.compiler.is_compiling() and weight_only_suits(x2.shape[0], q.shape[0], q.shape[1]))


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] float, q [out, in] int8, scale [out] float -> x @ (q * scale).T [..., out] in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [M, in]
    # Cast only when needed: an in-graph cast of the scales breaks inductor's int8pack lowering
    # ("LoweringException: AssertionError: Pointwise"), so modules store them in the model dtype.
    scale = scale if scale.dtype == x.dtype else scale.to(x.dtype)
    if _use_weight_only_kernel(x2, q):
        y = int8_weight_only(x2, q, scale.float())  # [M, out]
    elif _use_int8pack(x2):
        y = torch._weight_int8pack_mm(x2.contiguous(), q, scale)  # [M, out]
    else:
        y = _cast_matmul(x2, q, scale)
    return y.reshape(*lead, q.shape[0])  # [..., out]


def _cast_matmul(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x2 [M, in] @ (q * scale).T -> [M, out] in x2's dtype, q cast to that dtype `CAST_BLOCK`
    elements (whole rows) at a time into one reused buffer: (x @ q.T) * s == x @ (q * s).T, so
    no dequantised copy is made, and a full-size cast would also page-fault its way through a
    fresh buffer (a 16384 x 2048 weight at 256 rows: 78 ms in all against 40 ms blockwise, bf16
    26 ms; measured with another job on the machine). Compiled graphs keep the one-shot cast."""
    rows = max(1, CAST_BLOCK // q.shape[1])
    if rows >= q.shape[0] or torch.compiler.is_compiling():
        return F.linear(x2, q.to(x2.dtype)) * scale
    buf = torch.empty(rows, q.shape[1], dtype=x2.dtype, device=x2.device)
    y = torch.empty(x2.shape[0], q.shape[0], dtype=x2.dtype, device=x2.device)
    for a in range(0, q.shape[0], rows):
        w = buf[:min(rows, q.shape[0] - a)]
        w.copy_(q[a:a + rows])
        torch.mul(F.linear(x2, w), scale[a:a + rows], out=y[:, a:a + rows])
    return y


class Int8Linear(nn.Module):
    """Drop-in for an inference `nn.Linear` with an int8 weight and per-output-channel scales.

    Buffers: weight_int8 [out, in] int8, weight_scale [out] and bias [out] (or None) in the
    original weight dtype.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_per_channel(linear.weight)
        self.register_buffer("weight_int8", q)
        # In the model dtype: the fused kernel takes scales in the activation dtype anyway.
        self.register_buffer("weight_scale", scale.to(linear.weight.dtype))
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        y = int8_matmul(x, self.weight_int8, self.weight_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return linear_repr(self)


class Int8Embedding(nn.Module):
    """Drop-in for a tied `nn.Embedding` with an int8 table: rows come back in the scales' dtype
    (the model's), and `linear(h)` is the LM head.

    Buffers: weight_int8 [V, D] int8, weight_scale [V] in the original weight dtype.
    """

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        q, scale = quantize_per_channel(emb.weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale.to(emb.weight.dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] int64 -> [..., D] in the original embedding dtype."""
        scale = self.weight_scale[ids][..., None]  # [..., 1]; its dtype is the model's (also after loading)
        return self.weight_int8[ids].to(scale.dtype) * scale  # [..., D]

    def linear(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., D] -> [..., V]: the tied LM head through the int8 table."""
        return int8_matmul(h, self.weight_int8, self.weight_scale)


def linear_repr(m: nn.Module) -> str:
    """`extra_repr` of vlmkit's drop-in Linears (int8, packed bf16, packed int8): nn.Linear's fields."""
    return f"in_features={m.in_features}, out_features={m.out_features}, bias={m.bias is not None}"


def _quantized_tied_logits(self: Decoder, h: torch.Tensor) -> torch.Tensor:
    """Replacement for `Decoder.logits` when the tied table is quantised (its module has
    `linear(h)`: Int8Embedding, Int4Embedding): h [B, T, D] -> [B, T, V]."""
    logits = self.embed_tokens.linear(h)
    cap = self.cfg.final_logit_softcap
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


@torch.no_grad()
def replace_modules(model: nn.Module, make_linear: Callable[[nn.Linear], nn.Module | None],
                    make_embedding: Callable[[nn.Embedding], nn.Module | None] | None,
                    skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace each `nn.Linear` outside `skip` by `make_linear(linear)` (None: kept) and, with
    `make_embedding`, each tied decoder embedding by `make_embedding(emb)`, whose module's
    `linear(h)` then serves as the LM head (the instance's `logits` is replaced). In place."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and not _skipped(name, skip):
            new = make_linear(m)
            if new is not None:
                _set_child(model, name, new)
    if make_embedding is not None:
        for name, m in list(model.named_modules()):
            if isinstance(m, Decoder) and m.lm_head is None and not _skipped(name, skip):
                new = make_embedding(m.embed_tokens)
                if new is not None:
                    m.embed_tokens = new
                    m.logits = types.MethodType(_quantized_tied_logits, m)  # per instance, like checkpointing
    return model


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = ("vision_tower",), embeddings: bool = True,
                  min_features: int = 16) -> nn.Module:
    """Replace the model's `nn.Linear` layers (and a decoder's tied embedding) by int8 versions, in place.

    Args:
        model: a loaded model in eval mode (PaliGemma, Gemma, ...); returned for chaining.
        skip: module-name prefixes left in float. The vision tower runs once per image
            (compute-bound, and cached by the pipeline), so quantising it saves memory but
            costs accuracy for no speed.
        embeddings: also quantise every tied decoder embedding / LM head (the largest matrix).
        min_features: Linears with fewer input features are kept (no bandwidth to save).
    """
    return replace_modules(model, lambda m: Int8Linear(m) if m.in_features >= min_features else None,
                           Int8Embedding if embeddings else None, skip)


def state_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and persistent buffers (what the model holds in memory)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
