"""Bundled models, registered by name, and resolution of a `--model` argument (bundled name,
folder, or Hugging Face Hub name).

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
    """A bundled model name, a folder path, a Hugging Face Hub name `org/name[@revision]`
    (`vlmkit.weights.hub`), or None (the default bundled model) -> folder.

    A bundled name or an existing path wins over a Hub name of the same spelling."""
    models = bundled_models()
    if source is None:
        if DEFAULT_MODEL not in models:
            raise CheckpointError(
                f"the default model {DEFAULT_MODEL} is not bundled in this installation; pass --model DIR"
            )
        return models[DEFAULT_MODEL]
    found = find_model(source)
    if found is None:
        names = ", ".join(models) or "none"
        raise CheckpointError(f"model {source} is neither a folder nor a bundled model (bundled: {names}), "
                              "nor a Hugging Face Hub name org/name[@revision]")
    return found


def find_model(source: str | Path) -> Path | None:
    """`resolve_model` for a given `source`, but None (nothing fetched) when it is neither a bundled
    name, an existing path nor a Hub name, so callers can try their own names (presets) next."""
    from vlmkit.weights.hub import parse_hub_name, snapshot

    models = bundled_models()
    if str(source) in models:
        return models[str(source)]
    path = Path(source)
    if path.exists():
        return path
    hub = parse_hub_name(str(source))
    return snapshot(*hub) if hub is not None else None
