"""vlmkit: exact, fast, readable vision-language models in plain PyTorch.

Public API: `load(source)` returns a `Pipeline` (model + tokenizer + processor) whose
`generate(prompt, images)` answers; see `vlmkit.pipeline`. `load_two_tower(source)` returns a
`TwoTower` (embeddings, zero-shot classification, retrieval); see `vlmkit.two_tower`.
"""

__version__ = "0.1.0"


def load(source=None, dtype=None, device="cpu", compile=False, quantize=None, group_size=None, prepack=False):
    """Load a bundled model by name (None = the default) or a HF checkpoint folder; `compile=True`
    decodes with a compiled step, `quantize="int8" | "int8-dyn" | "int4" | "int4-g64"` (...)
    quantises the decoder, `prepack=True` stores its bf16 CPU weights in oneDNN's blocked layout
    where that is bit-exact and runs int8-dyn layers through vlmkit's int8 kernel (see
    `vlmkit.pipeline.Pipeline.load`)."""
    from vlmkit.pipeline import load as _load

    return _load(source, dtype=dtype, device=device, compile=compile, quantize=quantize, group_size=group_size,
                 prepack=prepack)


def load_two_tower(source, dtype=None, device="cpu"):
    """Load an image-text model folder (siglip, coca) as a `vlmkit.two_tower.TwoTower`."""
    from vlmkit.two_tower import TwoTower

    return TwoTower.load(source, dtype=dtype, device=device)


__all__ = ["__version__", "load", "load_two_tower"]
