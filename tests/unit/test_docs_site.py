"""The documentation site: generated reference pages cover the code, every page is in the nav,
and `mkdocs build --strict` passes (broken links, bad API references and missing pages fail it)."""

import argparse
import dataclasses
import importlib.util
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _walk(parser: argparse.ArgumentParser, path: str):
    """(command path, parser) for `parser` and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_cli_reference_names_every_command_and_flag():
    from vlmkit.cli import build_parser

    page = _hooks().cli_reference()
    commands = list(_walk(build_parser(), "vlmkit"))[1:]
    assert len(commands) >= 10
    for path, parser in commands:
        assert f"`{path}`" in page, path
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page, (path, flag)


def _dotted_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _dotted_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_config_reference_names_every_field_with_its_comment():
    from vlmkit.training.config import TrainConfig

    page = _hooks().config_reference()
    keys = list(_dotted_fields(TrainConfig))
    assert len(keys) > 30
    for key in keys:
        assert f"| `{key}` |" in page, key
    # A comment written next to a field in config.py is its meaning on the page.
    assert "stop (with a checkpoint) after this step" in page


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return [p for item in node for p in _nav_pages(item)]


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = set(_nav_pages(config["nav"]))
    generated = {_hooks().CLI_PAGE, _hooks().CONFIG_PAGE}
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages - nav == set(), "pages missing from mkdocs.yml's nav"
    assert nav - pages - generated == set(), "nav entries without a page"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
                    reason="mkdocs / mkdocs-material not installed (the [docs] or [dev] extra)")
def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin",
                                                                "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    assert "vlmkit generate" in (site / "reference" / "cli" / "index.html").read_text()
    assert "Pipeline" in (site / "api" / "index.html").read_text()
    # Offline: no stylesheet or script from another host (the theme's web fonts are switched off).
    html = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in html and "<script src=\"http" not in html
