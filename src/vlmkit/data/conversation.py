"""Conversations for chat templates: `--chat` turns and `--messages` files -> transformers' messages.

Messages are {"role": ..., "content": str | [part, ...]} dicts as transformers' (and OpenAI's)
chat APIs take them; a part is {"type": "text", "text": ...}, {"type": "image"} (optionally naming
its source under "image", "url", "path" or "base64") or OpenAI's {"type": "image_url",
"image_url": {"url": ...}}, which becomes {"type": "image", "url": ...} as transformers' processors
rewrite it. Text parts also get "content" (= "text"): see `text_part`. Image sources are local paths, file:// URLs or base64 (data: URLs); vlmkit runs
offline, so http(s) URLs are refused.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from vlmkit.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
SOURCE_KEYS = ("image", "url", "path", "base64")


def text_part(text: str) -> dict:
    """A text part under both keys templates read: "text" (transformers' convention, most templates)
    and "content" (Pixtral-12B's published template reads only `chunk["content"]`, so a "text"-only
    part would silently vanish from its prompt)."""
    return {"type": "text", "text": text, "content": text}


def chat_turns(turns: list[str], num_images: int) -> list[dict]:
    """Alternating user / assistant turns (odd count: the last asks); the images open the first turn."""
    if len(turns) % 2 == 0:
        raise DataError(f"--chat got {len(turns)} turns; give an odd number (user, assistant, ..., user) so "
                        "that the conversation ends with a question")
    messages = []
    for i, text in enumerate(turns):
        parts = [{"type": "image"}] * (num_images if i == 0 else 0) + [text_part(text)]
        messages.append({"role": ("user", "assistant")[i % 2], "content": parts})
    return messages


def _source(value, key: str, where: str):
    """An image part's source as load_image takes it: a path, or bytes for base64 / data: URLs."""
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: an image source must be a non-empty string")
    if key == "base64":
        return _decode(value, where)
    if value.startswith(("http://", "https://")):
        raise DataError(f"{where}: vlmkit reads images offline; download {value[:80]} and give its path")
    if value.startswith("data:"):
        header, _, data = value.partition(",")
        if not header.endswith(";base64"):
            raise DataError(f"{where}: a data: URL must be base64 (data:image/png;base64,...)")
        return _decode(data, where)
    return value.removeprefix("file://")


def _decode(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: not valid base64 image data") from None


def _part(part, where: str) -> tuple[dict, object | None]:
    """(the part as the template sees it, its image source or None)."""
    if not isinstance(part, dict) or part.get("type") not in ("text", "image", "image_url"):
        raise DataError(f"{where}: a content part must be an object with type text, image or image_url")
    if part["type"] == "text":
        if not isinstance(part.get("text"), str):
            raise DataError(f"{where}: a text part needs a 'text' string")
        return {**text_part(part["text"]), **part}, None
    if part["type"] == "image_url":
        info = part.get("image_url")
        url = info.get("url") if isinstance(info, dict) else info
        return {"type": "image", "url": url}, _source(url, "url", f"{where} image_url")
    keys = [k for k in SOURCE_KEYS if k in part]
    return part, (_source(part[keys[0]], keys[0], f"{where} {keys[0]}") if keys else None)


def parse_messages(data, name: str = "messages") -> tuple[list[dict], list]:
    """(messages, the image sources their parts name, in order) from a list of messages or an
    object with "messages" (an OpenAI request body). Every image part names a source, or none does."""
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if not isinstance(data, list) or not data:
        raise DataError(f"{name}: expected a non-empty list of messages (or an object with 'messages')")
    messages, sources, images = [], [], 0
    for i, message in enumerate(data):
        where = f"{name}: message {i}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where} must be an object with a role among {', '.join(ROLES)}")
        content = message.get("content")
        if isinstance(content, list):
            parsed = [_part(p, f"{where} part {j}") for j, p in enumerate(content)]
            content = [p for p, _ in parsed]
            images += sum(p["type"] == "image" for p in content)
            sources += [s for _, s in parsed if s is not None]
        elif not isinstance(content, str):
            raise DataError(f"{where}: content must be a string or a list of parts")
        messages.append({**message, "content": content})
    if sources and len(sources) != images:
        raise DataError(f"{name}: {len(sources)} of {images} image parts name a source; name one for every "
                        "image or for none (then --image fills them in order)")
    return messages, sources


def read_messages(path: str | Path) -> tuple[list[dict], list]:
    """`parse_messages` of a JSON file (one-line DataError naming it when unreadable)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"cannot read messages file {path}: {str(exc).splitlines()[0][:120]}") from None
    return parse_messages(data, str(path))
