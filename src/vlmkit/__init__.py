"""vlmkit: exact, fast, readable vision-language models in plain PyTorch.

Public API: `load(source)` returns a `Pipeline` (model + tokenizer + processor) whose
`generate(prompt, images)` answers; see `vlmkit.pipeline`.
"""

__version__ = "0.1.0"


def load(source=None, dtype=None, device="cpu", compile=False, quantize=None, group_size=None):
    """Load a bundled model by name (None = the default) or a HF checkpoint folder; `compile=True`
    decodes with a compiled step, `quantize="int8" | "int4" | "int4-g64"` (...) quantises the
    decoder's weights (see `vlmkit.pipeline.Pipeline.load`)."""
    from vlmkit.pipeline import load as _load

    return _load(source, dtype=dtype, device=device, compile=compile, quantize=quantize, group_size=group_size)


__all__ = ["__version__", "load"]
