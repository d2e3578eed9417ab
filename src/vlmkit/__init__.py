"""vlmkit: exact, fast, readable vision-language models in plain PyTorch.

Public API: `load(source)` returns a `Pipeline` (model + tokenizer + processor) whose
`generate(prompt, images)` answers; see `vlmkit.pipeline`.
"""

__version__ = "0.1.0"


def load(source=None, dtype=None, device="cpu"):
    """Load a bundled model by name (None = the default) or a HF checkpoint folder."""
    from vlmkit.pipeline import load as _load

    return _load(source, dtype=dtype, device=device)


__all__ = ["__version__", "load"]
