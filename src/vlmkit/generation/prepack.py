"""bf16 decoder weights in oneDNN's blocked layout, for faster CPU decoding with the same logits.

Axes: M rows (batch x tokens), K input features, N output features.

A bf16 `F.linear` on CPU runs oneDNN's AMX matmul on the plain [N, K] weight, which it first
copies into its blocked (VNNI) layout on every call. Decoding reads every weight once per token,
so that copy is a second pass over the bytes: with the weight stored in the blocked layout once
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's freezing does for bf16), the
Qwen2-VL-2B decoder decoded 1.10x (batch 1) and 1.11x (batch 8) faster than with plain weights,
with its down projections left plain (one thread, load average 5 -> 3, benchmarks/bench_generate.py
variant vlmkit+packed); packing every projection measured 1.30x-1.37x.

Exactness is checked, not assumed: the blocked kernel sums over K in the plain kernel's order
for some shapes only. On the machine this was measured (AMX, oneDNN 3.12, 1 and 2 threads) every
Qwen2-VL-2B projection (q/k/v with biases, o, gate, up) gave bit-identical outputs at 1, 8, 82
and 656 rows, while the down projection (K = 8960) did not (1 and 82 rows). So `prepack_decoder`
compares each distinct (N, K, bias) shape on seeded inputs at several row counts against
`F.linear` and packs only the shapes that agree bit for bit; the others stay plain (see
`packs_exactly` for how many outputs a check needs). Prompts longer than the largest checked row
count (656) are not covered by the check.

`prepack_decoder` also packs a decoder quantised "int8-dyn" (W8A8): each such layer multiplies
through vlmkit's int8 kernel on its plain weight or, where that kernel does not run, keeps its
weight in oneDNN's int8 blocked layout (`vlmkit.generation.quantize_packed`, exact by integer
arithmetic and checked per shape too), which then serves every row count.

The packed weight replaces the plain one (memory stays the same), so a packed model serves
inference only: no training, no state dict; it compiles with frozen weights only (mode
max-autotune). The tied LM head stays plain, since its table is also the embedding. The result
depends on the thread count, so pack with the threads you will decode with.
"""

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.generation.quantize import linear_repr
from vlmkit.generation.quantize_packed import PACKED_INT8, pack_int8, packs_int8_exactly
from vlmkit.models.registry import family_of

CHECK_ROWS = (1, 2, 8, 16, 82, 256, 656)
CHECK_OUTPUTS = 1 << 17
PACK_ROWS_HINT = 8  # oneDNN picks the blocked layout for this batch size (decode batches)


def prepack_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this torch build can run bf16 blocked-layout linears here (CPU with oneDNN bf16)."""
    return (dtype == torch.bfloat16 and device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose bf16 weight lives in oneDNN's blocked layout.

    x [..., K] bf16 -> [..., N] bf16, bit-identical to the plain linear for the shapes that
    `packs_exactly` accepted.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)  # opaque
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)  # [..., N]

    def extra_repr(self) -> str:
        return linear_repr(self)


def packs_exactly(linear: nn.Linear, rows: tuple[int, ...] = CHECK_ROWS, seed: int = 0) -> bool:
    """Whether the packed kernel gives `F.linear`'s bits for this layer's shape at every row count.

    A row count is checked over at least CHECK_OUTPUTS outputs (single-row calls are repeated): a
    different summation order flips only a few bf16 roundings in 10^5, so one 1536-output row
    could pass by chance.
    """
    packed = PackedLinear(linear)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for m in rows:
            for _ in range(min(64, -(-CHECK_OUTPUTS // (m * linear.out_features)))):
                x = torch.randn(m, linear.in_features, generator=gen).to(linear.weight.dtype)
                if not torch.equal(packed(x), F.linear(x, linear.weight, linear.bias)):
                    return False
    return True


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS (glibc): a plain weight below malloc's mmap threshold
    lives on the heap, where freeing it keeps it resident, and the packed copy (padded to oneDNN's
    blocks) cannot reuse its slot, so without this the process would hold both layouts."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc: nothing to do
        pass


def prepack_decoder(model: nn.Module) -> dict:
    """Pack `model`'s decoder (its generation adapter's `decoder(model)`) in place: its bf16
    Linears where `packs_exactly` holds, and its W8A8 ("int8-dyn") layers
    (`vlmkit.generation.quantize_packed`) where `packs_int8_exactly` holds; returns
    {"packed": n, "plain": n, "plain_shapes": [...]} (int8 shapes are marked "int8").

    A no-op (all plain) off CPU, for float layers outside bf16, or without oneDNN support. One
    layer at a time, so the peak memory is the model plus one weight.
    """
    adapter = family_of(model).generation
    part = model if adapter is None else adapter.decoder(model)
    # (parent, name) only: holding the Linears themselves would keep every plain weight alive.
    targets = [(parent, name) for parent in part.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear or type(child) in PACKED_INT8]
    verdict: dict[tuple, bool] = {}  # one check per shape: ~7 per decoder
    report = {"packed": 0, "plain": 0, "plain_shapes": []}
    for parent, name in targets:
        child = getattr(parent, name)
        new, shape = _packed(child, verdict)
        report["packed" if new is not None else "plain"] += 1
        if new is None and shape not in report["plain_shapes"]:
            report["plain_shapes"].append(shape)
        if new is not None:
            setattr(parent, name, new)
            del child  # the last reference to the plain weight
            _release_freed_memory()
    return report


def _packed(child: nn.Module, verdict: dict) -> tuple[nn.Module | None, tuple]:
    """(the packed module or None, the shape key its check is shared under)."""
    if type(child) is nn.Linear:
        shape = (child.out_features, child.in_features, child.bias is not None)
        if shape not in verdict:
            verdict[shape] = prepack_available(child.weight.dtype, child.weight.device) and packs_exactly(child)
        return (PackedLinear(child) if verdict[shape] else None), shape
    shape = (*child.weight_int8.shape, getattr(child, "bias", None) is not None, "int8")
    new = None if verdict.get(shape) is False else pack_int8(child)  # no packing for a failed shape
    if shape not in verdict:
        verdict[shape] = new is not None and packs_int8_exactly(child, new)
    return (new if verdict[shape] else None), shape
