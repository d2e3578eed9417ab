"""Weight-only quantisation schemes by name, applied to a model's decoder, saved and reloaded.

Schemes: "int8" (per-channel symmetric, `vlmkit.generation.quantize`), "int8-dyn" (the same
int8 weights with dynamic per-row int8 activations and an integer GEMM, `quantize_dynamic`: the
scheme that is faster than float at batch 8 too) and "int4" / "int4-gG"
(group-wise asymmetric with group size G in 32, 64, 128; default 64; `quantize_int4`), whose LM
head and any projection G does not divide are int8 (see `quantize_model`). Only the
family's decoder (its generation adapter's `decoder(model)`, tied LM head included) is
quantised: the vision tower and projector run once per image, and some projectors read their
weight's dtype.

A quantised folder (`save_quantized`) is the checkpoint's `config.json` with one more key,
`vlmkit_quantization = {"scheme": ..., "format": 1}`, the model's own state dict (vlmkit's
parameter names, low-bit codes and scales as stored by the modules) in safetensors, and the
source folder's tokenizer / processor files. Loading (`load_quantized`) builds the model on the
meta device, gives it the same quantised structure, assigns the saved tensors strictly and
rebuilds the kernel layouts: the same logits, bit for bit, as the model that was saved.

A float folder is quantised while it loads (`load_hf_quantized`, what `vlmkit.load(...,
quantize=...)` does): module by module, so the float decoder never exists in full.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.generation.quantize import (Int8Embedding, Int8Linear, _set_child, chunk_rows, quantize_int8,
                                       quantize_per_channel)
from vlmkit.generation.quantize_dynamic import quantize_int8_dynamic
from vlmkit.generation.quantize_int4 import GROUP_SIZES, Int4Embedding, Int4Linear, quantize_int4
from vlmkit.models.registry import family_of

QUANT_KEY = "vlmkit_quantization"
FORMAT = 1
DEFAULT_GROUP_SIZE = 64
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")
_QUANTISED = (Int8Linear, Int8Embedding, Int4Linear, Int4Embedding)  # what quantize_model builds


@dataclass(frozen=True, kw_only=True)
class QuantScheme:
    """bits 8 (per channel) or 4 (group-wise, `group_size` input features per scale and zero);
    `dynamic`: int8 activations too (W8A8, "int8-dyn")."""

    bits: int
    group_size: int | None = None
    dynamic: bool = False

    @classmethod
    def parse(cls, text: str, group_size: int | None = None) -> QuantScheme:
        """"int8", "int8-dyn", "int4", "int4-g32" / "int4-g64" / "int4-g128"; `group_size` (int4
        only) overrides the name's. One-line ConfigError for anything else."""
        name, _, g = text.strip().lower().partition("-g")
        if name in ("int8", "int8-dyn") and not g:
            if group_size is not None:
                raise ConfigError("a group size applies to int4 only (int8 has one scale per output channel)")
            return cls(bits=8, dynamic=name == "int8-dyn")
        if name == "int4":
            size = group_size or (int(g) if g.isdigit() else None if g else DEFAULT_GROUP_SIZE)
            if size in GROUP_SIZES:
                return cls(bits=4, group_size=size)
            raise ConfigError(f"int4 group size must be one of {', '.join(map(str, GROUP_SIZES))}, got "
                              f"{group_size or g!r}")
        raise ConfigError(f"unknown quantisation {text!r}; use int8, int8-dyn, int4 or int4-g32 / int4-g64 / int4-g128")

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8-dyn" if self.dynamic else "int8"
        return f"int4-g{self.group_size}"


def quantized_part(model: nn.Module) -> nn.Module:
    """The module a scheme quantises: the family's decoder, or the model itself without one."""
    adapter = family_of(model).generation
    return model if adapter is None else adapter.decoder(model)


def quantize_model(model: nn.Module, scheme: QuantScheme | str) -> nn.Module:
    """Quantise `model`'s decoder (see the module docstring) in place; returns `model`."""
    scheme = QuantScheme.parse(scheme) if isinstance(scheme, str) else scheme
    part = quantized_part(model)
    if scheme.bits == 4:
        quantize_int4(part, scheme.group_size, skip=("lm_head",), embeddings=False)
    # int8: every Linear and the tied head. int4: the LM head (tied or not) and any Linear the group
    # size does not divide. An int4 head doubled the bundled model's max logit error (0.08 -> 0.17
    # of max |logit|) and its held-out loss change (7x); llama.cpp's Q4 mixes keep it wider too.
    if scheme.dynamic:
        quantize_int8_dynamic(part)
    else:
        quantize_int8(part, skip=())
    model.quantization = scheme  # what `save_quantized` records
    return model


def scheme_of(config: dict, where: str) -> QuantScheme | None:
    """The scheme a folder's config.json records (None: a float checkpoint)."""
    entry = config.get(QUANT_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or not isinstance(entry.get("scheme"), str):
        raise CheckpointError(f"{where}: {QUANT_KEY} must be {{\"scheme\": ..., \"format\": {FORMAT}}}, got {entry!r}")
    return QuantScheme.parse(entry["scheme"])


def save_quantized(model: nn.Module, folder: str | Path, source: Path | None = None, overwrite: bool = False) -> Path:
    """Write a `quantize_model`-ed model as a quantised folder (see the module docstring).

    `source` is the checkpoint folder it was loaded from: its config.json is kept as it is (one
    key added) and its other files (tokenizer, processor) are copied."""
    from vlmkit.weights.hf import CONFIG_NAME
    from vlmkit.weights.safetensors_io import INDEX_NAME, atomic_folder, write_state_dict

    scheme = getattr(model, "quantization", None)
    if scheme is None:
        raise ConfigError("this model is not quantised; quantise it first (quantize_model or --quantize)")
    fam = family_of(model)
    if source is not None and (Path(source) / CONFIG_NAME).is_file():
        config = json.loads((Path(source) / CONFIG_NAME).read_text())
    else:
        config = fam.config_to_hf(model.cfg)
    config[QUANT_KEY] = {"scheme": scheme.name, "format": FORMAT}
    with atomic_folder(folder, overwrite, stale=(INDEX_NAME,)) as tmp:
        write_state_dict(model.state_dict(), tmp, metadata={QUANT_KEY: scheme.name})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        for f in sorted(Path(source).iterdir()) if source is not None else ():
            if f.is_file() and f.name not in _WEIGHT_FILES and not f.name.endswith(".safetensors"):
                shutil.copyfile(f, tmp / f.name)
    return Path(folder)


def load_quantized(folder: str | Path, dtype=None, device="cpu") -> nn.Module:
    """Load a folder written by `save_quantized`: same structure, tensors assigned strictly;
    floating tensors (scales, norms, the float parts) cast to `dtype` (see `resolve_dtype`).
    Lean: each tensor is read once, straight into its final dtype (`SafetensorsReader.get`)."""
    from vlmkit.weights.dtype import resolve_dtype
    from vlmkit.weights.hf import CONFIG_NAME, open_model, read_config

    scheme = scheme_of(read_config(folder)[0], str(Path(folder) / CONFIG_NAME))
    if scheme is None:
        raise CheckpointError(f"{folder} is not a quantised folder (its config.json has no {QUANT_KEY})")
    model, fam, reader = open_model(folder)
    dtype = resolve_dtype(dtype, device)
    quantize_model(model, scheme)  # on the meta device: the structure only
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(reader.keys())), sorted(set(reader.keys()) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{folder}: tensors do not match a {scheme.name} {fam.name} model: missing "
                              f"{missing[:5]}, unexpected {extra[:5]}")
    state = {}
    for key, want in expected.items():
        shape, _ = reader.header(key)
        if tuple(shape) != tuple(want.shape):
            raise CheckpointError(f"{folder}: {key} has shape {tuple(shape)}, expected {tuple(want.shape)}")
        # A fresh tensor (not a view of a memory map): the fused CPU kernels read their operands
        # with aligned vector loads (an unaligned int8 weight crashed them); torch's are aligned.
        state[key] = reader.get(key, dtype if reader.dtype(key).is_floating_point else None)
    model.load_state_dict(state, strict=True, assign=True)  # int4 modules repack in a load hook
    return model.to(device).eval()


def load_hf_quantized(folder: str | Path, scheme: QuantScheme | str, dtype=None, device="cpu") -> nn.Module:
    """`quantize_model(load_hf(folder, dtype, device), scheme)`, bit for bit (the same modules
    built from the same float tensors), without the float decoder ever in memory whole.

    The model and its quantised structure are built on the meta device; the tensors the scheme
    keeps in float (vision tower, norms, skipped Linears) are read as `load_hf` reads them, then
    each quantised module in turn: an int8 one (every vocabulary table, tied or not) is read and
    quantised a chunk of `quantize.CHUNK_ELEMENTS` weights at a time, an int4 one is read whole,
    built by the constructor `quantize_model` uses and its float weight dropped before the next
    module is read. Peak memory: the final model plus the largest int4 Linear's float weight and
    a few float32 chunks of temporaries."""
    from vlmkit.weights.dtype import resolve_dtype
    from vlmkit.weights.hf import open_model, plan_state

    model, fam, reader = open_model(folder)
    dtype = resolve_dtype(dtype, device)
    plan = plan_state(reader, fam, model.cfg, model, dtype, str(folder), device)  # strict; nothing read yet
    floats = dict(model.named_modules())  # the float modules (meta), before quantize_model replaces them
    quantize_model(model, scheme)
    targets = {name: m for name, m in model.named_modules() if isinstance(m, _QUANTISED)}
    rest = {k: p.read() for k, p in plan.items() if k.rpartition(".")[0] not in targets}
    result = model.load_state_dict(rest, strict=False, assign=True)  # int4's repack hooks skip meta modules
    left = [k for k in result.missing_keys if k.rpartition(".")[0] not in targets]
    if left or result.unexpected_keys:
        raise CheckpointError(f"{folder}: not loaded: {left[:5]}, unexpected {result.unexpected_keys[:5]}")
    with torch.no_grad():
        for name, like in targets.items():
            source = floats.pop(name)
            if isinstance(like, (Int8Linear, Int8Embedding)):  # the vocabulary tables among them
                _int8_by_rows(like, {k: plan[f"{name}.{k}"] for k in source.state_dict()}, dtype)
                continue
            source.load_state_dict({k: plan[f"{name}.{k}"].read() for k in source.state_dict()}, assign=True)
            _set_child(model, name, _from_float(like, source))
            del source  # the float tensors go now, before the next module's are read
    return model.to(device).eval()


def _int8_by_rows(like: nn.Module, pending: dict, dtype: torch.dtype) -> None:
    """Fill the meta int8 module `like` with what its constructor computes from the float weight
    (`quantize_per_channel`; the scales in the model dtype, the bias as read), reading the weight
    a chunk of rows at a time: rows are quantised independently, so the codes are the same bits
    and a float copy of a 257k-row table never exists."""
    w = pending["weight"]
    n, out = chunk_rows(w), w.shape[0]
    q = scale = None
    for a in range(0, out, n):
        q_rows, s_rows = quantize_per_channel(w.read(a, min(a + n, out)))  # [rows, in] int8, [rows] float32
        if q is None:
            q, scale = q_rows.new_empty(w.shape), s_rows.new_empty(out)  # on the device read to
        q[a:a + n], scale[a:a + n] = q_rows, s_rows
    state = {"weight_int8": q, "weight_scale": scale.to(dtype)}
    if "bias" in pending:
        state["bias"] = pending["bias"].read()
    like.load_state_dict(state, strict=True, assign=True)


def _from_float(like: nn.Module, source: nn.Module) -> nn.Module:
    """The int4 module `like` (built on the meta device) made from the float module `source` by
    the constructor `quantize_model` called."""
    if isinstance(like, Int4Linear):
        return Int4Linear.from_linear(source, like.group_size)
    return Int4Embedding.from_embedding(source, like.group_size)
