"""MkDocs hooks: the CLI and training-config reference pages, generated at build time.

The pages are built from the code itself (the argparse parsers of `vlmkit.cli.build_parser` and
the `TrainConfig` dataclasses with the comments written next to their fields), so they cannot
drift from what the program accepts. `mkdocs.yml` names this file under `hooks:`; the two
functions `cli_reference()` and `config_reference()` are also what tests/unit/test_docs_reference.py
checks.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/training_config.md"


def _md(text: str | None) -> str:
    """Help text safe inside a Markdown table cell."""
    return (text or "").replace("|", "\\|").replace("\n", " ").strip()


def _flag_row(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS:
        return None
    names = ", ".join(f"`{n}`" for n in action.option_strings) or f"`{action.dest}`"
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        names += "<br>one of " + ", ".join(f"`{c}`" for c in action.choices)
    default = action.default
    shown = "" if default in (None, argparse.SUPPRESS, False, []) else f"`{default}`"
    return f"| {names} | {_md(action.help)} | {shown} |"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, one-line help) of each subcommand of `parser`, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            out += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return out


def _command_section(path: str, parser: argparse.ArgumentParser, summary: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{path}`", ""]
    if summary:
        lines += [_md(summary), ""]
    if parser.description and parser.description != summary:
        lines += [parser.description.strip(), ""]
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())  # argparse's own wrapping undone
    lines += ["```text", textwrap.fill(usage, 100, subsequent_indent="    ", break_on_hyphens=False), "```", ""]
    rows = [r for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            if (r := _flag_row(a))]
    if rows:
        lines += ["| argument | meaning | default |", "|---|---|---|", *rows, ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```", ""]
    for name, sub, help_ in _subcommands(parser):
        lines += _command_section(f"{path} {name}", sub, help_, min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """The CLI reference page: every subcommand of `vlmkit`, its usage and every flag's help."""
    from vlmkit.cli import build_parser

    parser = build_parser()
    lines = ["# CLI reference", "",
             "Generated from the parsers of `vlmkit.cli.build_parser()` when the site is built: every "
             "subcommand, its usage line and every flag with its help and default. A bad flag value is "
             "refused when parsed, with one line naming the flag and exit code 2.", ""]
    for name, sub, help_ in _subcommands(parser):
        lines += _command_section(f"vlmkit {name}", sub, help_, 2)
    return "\n".join(lines) + "\n"


def _field_comments(cls: type) -> dict[str, str]:
    """Comments written next to (trailing) or just above each field of dataclass `cls`."""
    source_lines, _ = inspect.getsourcelines(cls)
    tree = ast.parse(textwrap.dedent("".join(source_lines)))
    comments = {}
    for node in tree.body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        line = source_lines[node.lineno - 1]
        parts = [line.split("  # ", 1)[1].strip()] if "  # " in line else []
        above, i = [], node.lineno - 2
        while i >= 0 and source_lines[i].strip().startswith("#"):
            above.insert(0, source_lines[i].strip().lstrip("#").strip())
            i -= 1
        comments[node.target.id] = " ".join(above + parts)
    return comments


def _type_name(tp) -> str:
    text = tp if isinstance(tp, str) else tp.__name__ if isinstance(tp, type) else repr(tp)
    return text.replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "(required)"


def _config_rows(cls: type, prefix: str, nested: list[tuple[str, type]]) -> list[str]:
    hints = typing.get_type_hints(cls)
    comments, rows = _field_comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(tp):
            nested.append((f"{prefix}{f.name}", tp))
            rows.append(f"| `{prefix}{f.name}` | `{tp.__name__}` | see below | {_md(comments.get(f.name))} |")
            continue
        rows.append(f"| `{prefix}{f.name}` | `{_md(_type_name(tp))}` | {_md(_default(f))} | "
                    f"{_md(comments.get(f.name))} |")
    return rows


def config_reference() -> str:
    """The training-config page: every `TrainConfig` field (nested sections included) with its
    type, default and the comment written next to it in `vlmkit/training/config.py`."""
    from vlmkit.training.config import TrainConfig

    lines = ["# Training config reference", "",
             "Generated from the `TrainConfig` dataclasses (`src/vlmkit/training/config.py`) when the site "
             "is built. Every field can be set from the command line as `--key.value VALUE` (for example "
             "`vlmkit train finetune --optim.lr 3e-4 --freeze.vision_tower false`); an unknown key "
             "or a value that does not parse as the field's type is one error line naming the key.", ""]
    queue: list[tuple[str, type]] = [("", TrainConfig)]
    while queue:
        prefix, cls = queue.pop(0)
        title = f"`{prefix}`: `{cls.__name__}`" if prefix else "`TrainConfig` (top level)"
        doc = inspect.getdoc(cls)
        lines += [f"## {title}", ""]
        if doc and not doc.startswith(f"{cls.__name__}("):
            lines += [doc, ""]
        nested: list[tuple[str, type]] = []
        lines += ["| key | type | default | meaning |", "|---|---|---|---|",
                  *_config_rows(cls, f"{prefix}." if prefix else "", nested), ""]
        queue += nested
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """MkDocs event: add the generated reference pages to the site's files."""
    from mkdocs.structure.files import File

    for path, build in ((CLI_PAGE, cli_reference), (CONFIG_PAGE, config_reference)):
        files.append(File.generated(config, path, content=build()))
    return files
