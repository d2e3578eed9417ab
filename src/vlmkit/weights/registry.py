"""Bundled models, registered by name, and resolution of a `--model` argument.

A bundled model is an ordinary HF-format folder shipped as package data under
`vlmkit/assets/models/<name>/`; its metadata (image size, mean/std, tokenizer) lives beside the
weights, as every model's does.
"""

from pathlib import Path

from vlmkit.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_MODEL = "vlmkit-shapes-tiny"


def bundled_models() -> dict[str, Path]:
    """Name -> folder of every bundled model present in this installation."""
    if not ASSETS.is_dir():
        return {}
    return {p.name: p for p in sorted(ASSETS.iterdir()) if (p / "config.json").is_file()}


def resolve_model(source: str | Path | None) -> Path:
    """A bundled model name, a folder path, or None (the default bundled model) -> folder."""
    models = bundled_models()
    if source is None:
        if DEFAULT_MODEL not in models:
            raise CheckpointError(
                f"the default model {DEFAULT_MODEL} is not bundled in this installation; pass --model DIR"
            )
        return models[DEFAULT_MODEL]
    if str(source) in models:
        return models[str(source)]
    path = Path(source)
    if not path.exists():
        names = ", ".join(models) or "none"
        raise CheckpointError(f"model {source} is neither a folder nor a bundled model (bundled: {names})")
    return path
