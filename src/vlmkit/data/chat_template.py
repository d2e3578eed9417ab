"""Chat templates: render a checkpoint's own Jinja template exactly as transformers does.

A checkpoint folder carries its template in one of three places. `load_chat_template` reads them in
the order transformers' `AutoProcessor` + tokenizer resolve them (processing_utils.py,
tokenization_utils_base.py, 5.x):

    chat_template.json  {"chat_template": "..."}  (legacy processor file; wins when present)
    chat_template.jinja  raw template text         (what 5.x `save_pretrained` writes)
    tokenizer_config.json  "chat_template" key     (tokenizer fallback; a list of named templates
                                                     or a dict picks "default")

`ChatTemplate.render` uses the same Jinja environment as `apply_chat_template`
(utils/chat_template_utils.py): a sandboxed environment with trim_blocks and lstrip_blocks, the
`loopcontrols` extension, a `{% generation %}` block that renders its body unchanged, `tojson`
without HTML escaping (json.dumps, ensure_ascii=False), and the globals `raise_exception`,
`strftime_now`, `dict` and `namespace`. The variables are `messages`, `tools`, `documents`,
`add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`, ...).
Undefined variables are not strict in transformers (they render as ""), so not here either.

Messages are dicts {"role": ..., "content": str | [{"type": "text", "text": ...},
{"type": "image"}, ...]}; keys whose value is None are dropped first, as transformers does.
A template that cannot be parsed or that raises while rendering is one `ChatTemplateError` line.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlmkit.errors import VlmkitError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(VlmkitError):
    """A chat template is missing, malformed, or raised an error while rendering."""


# (blocks rendered so far, spans found) while `ChatTemplate.render_spans` runs, else None.
_GENERATION_SPANS: ContextVar = ContextVar("generation_spans", default=None)


def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for masks; renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            text = caller()
            tracking = _GENERATION_SPANS.get()
            if tracking is not None:  # the output before this block has been yielded and collected
                blocks, spans = tracking
                start = sum(len(b) for b in blocks)
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes <, >, & for HTML; chat templates must not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore attributes (transformers' sandbox hardening)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace, dict=dict,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _plain(value: Any) -> Any:
    """JSON-like copy of `value` (what the template may see); other objects become '<TypeName>'."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    return f"<{type(value).__name__}>"


@dataclass(kw_only=True)
class ChatTemplate:
    """A compiled chat template plus the special-token strings it may reference.

    Args:
        source: the Jinja text.
        name: where it came from (a path or "<string>"), used in error messages.
        special_tokens: e.g. {"bos_token": "<s>", "eos_token": "</s>"}, passed as variables.
    Raises:
        ChatTemplateError: the template does not parse.
    """

    source: str
    name: str = "<string>"
    special_tokens: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        import jinja2

        try:
            self._template = _environment().from_string(self.source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template {self.name} does not parse: {_one_line(exc)}") from None

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
               tools: list | None = None, documents: list | None = None, **variables: Any) -> str:
        """The prompt text for one conversation (what `apply_chat_template(tokenize=False)` returns).

        Raises:
            ChatTemplateError: a message is not a dict, or the template raised (e.g. `raise_exception`).
        """
        return self.render_spans(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                 documents=documents, **variables)[0]

    def render_spans(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                     tools: list | None = None, documents: list | None = None,
                     **variables: Any) -> tuple[str, list[tuple[int, int]]]:
        """(`render`'s text, the [start, end) character spans of its `{% generation %}` blocks), the
        spans transformers' `return_assistant_tokens_mask` marks; [] for a template without them."""
        chat = []
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise ChatTemplateError(f"message {i} must be a dict with role and content, "
                                        f"got {type(message).__name__}")
            chat.append(_plain({k: v for k, v in message.items() if v is not None}))
        context = {**self.special_tokens, **_plain(variables)}
        blocks, spans = [], []
        token = _GENERATION_SPANS.set((blocks, spans))
        try:
            for block in self._template.generate(messages=chat, tools=_plain(tools), documents=_plain(documents),
                                                 add_generation_prompt=add_generation_prompt, **context):
                blocks.append(block)
        except Exception as exc:  # noqa: BLE001 - any failure inside a hub template is the template's
            raise ChatTemplateError(f"chat template {self.name} failed to render: {_one_line(exc)}") from None
        finally:
            _GENERATION_SPANS.reset(token)
        return "".join(blocks), spans


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChatTemplateError(f"cannot read {path}: {_one_line(exc)}") from None


def _pick_default(value: Any, path: Path) -> str:
    """tokenizer_config's chat_template: a string, a list of {name, template}, or a dict by name."""
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict):
        value = value.get("default")
    if not isinstance(value, str):
        raise ChatTemplateError(f"{path}: chat_template has no default template")
    return value


def _special_tokens(folder: Path) -> dict[str, str]:
    """Named special tokens as strings, from tokenizer_config.json (AddedToken dicts use 'content')."""
    path = folder / "tokenizer_config.json"
    config = _read_json(path) if path.is_file() else {}
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def load_chat_template(folder: str | Path) -> ChatTemplate:
    """The chat template of a checkpoint folder (see the module docstring for the file order).

    Raises:
        ChatTemplateError: no template in the folder, an unreadable file, or a template that does not parse.
    """
    folder = Path(folder)
    specials = _special_tokens(folder)
    legacy, raw, tok = folder / "chat_template.json", folder / "chat_template.jinja", folder / "tokenizer_config.json"
    if legacy.is_file():
        source = _read_json(legacy).get("chat_template")
        if not isinstance(source, str):
            raise ChatTemplateError(f"{legacy}: no 'chat_template' string")
        return ChatTemplate(source=source, name=str(legacy), special_tokens=specials)
    if raw.is_file():
        return ChatTemplate(source=raw.read_text(encoding="utf-8"), name=str(raw), special_tokens=specials)
    if tok.is_file() and "chat_template" in (config := _read_json(tok)):
        return ChatTemplate(source=_pick_default(config["chat_template"], tok), name=str(tok),
                            special_tokens=specials)
    raise ChatTemplateError(f"{folder} has no chat template (chat_template.json, chat_template.jinja or "
                            "tokenizer_config.json 'chat_template')")
