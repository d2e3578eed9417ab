"""`vlmkit.models` is a leaf: its files import torch, the standard library, `vlmkit.models.*` and
`vlmkit.errors`, never the engines (training, generation, weights, data, ...) or torch.distributed."""

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "src" / "vlmkit" / "models"
ALLOWED_VLMKIT = ("vlmkit.models", "vlmkit.errors")
FORBIDDEN_TORCH = ("torch.distributed",)


def _is(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden_imports(source: str, module: str) -> list[str]:
    """Imported module names in `source` (the file of dotted `module`) that break the leaf rule."""
    package = module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [base] if node.module else [f"{base}.{a.name}" for a in node.names]
    return [n for n in names
            if (_is(n, ("vlmkit",)) and not _is(n, ALLOWED_VLMKIT)) or _is(n, FORBIDDEN_TORCH)]


def _files():
    return sorted(MODELS.rglob("*.py"))


def test_the_check_catches_forbidden_imports():
    mod = "vlmkit.models.siglip.two_tower"
    assert forbidden_imports("from vlmkit.training.losses import ClipLoss", mod) == ["vlmkit.training.losses"]
    assert forbidden_imports("import vlmkit.weights.convert as c", mod) == ["vlmkit.weights.convert"]
    assert forbidden_imports("from ...generation import sampling", mod) == ["vlmkit.generation"]
    assert forbidden_imports("from ... import data", mod) == ["vlmkit.data"]
    assert forbidden_imports("import torch.distributed as dist", mod) == ["torch.distributed"]
    ok = "import torch\nfrom vlmkit.models.common.mapping import Table\nfrom vlmkit.errors import CheckpointError"
    assert forbidden_imports(ok, mod) == []


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MODELS)))
def test_models_is_a_leaf(path: Path):
    module = "vlmkit." + ".".join(path.relative_to(MODELS.parent).with_suffix("").parts)
    assert forbidden_imports(path.read_text(encoding="utf-8"), module) == [], f"{path} imports outside models/"


def test_every_models_file_is_checked():
    assert len(_files()) > 20 and MODELS / "registry.py" in _files()
