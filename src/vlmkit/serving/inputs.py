"""From an OpenAI chat request to a processed prompt: images, prompt text, limits, task output.

Prompt rule: a family whose processor renders conversations (`processor.chat`, e.g. LLaVA) gets
the whole conversation through the checkpoint's chat template. PaliGemma has no chat template:
the prompt is the text of the *last user message* (its parts joined by a space), earlier turns
are ignored, and the images are those of every message, in order. With the `vlmkit` extension
the prompt is built for the PaLI task instead (`vlmkit.tasks.build_prompt`).
"""

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlmkit.data.conversation import text_part
from vlmkit.data.image import load_image
from vlmkit.errors import ImageError
from vlmkit.serving.schemas import ChatRequest, ImagePart, TextPart
from vlmkit.tasks import build_prompt, parse_detections, parse_segmentations

_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)


class APIError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for (each breach is a 4xx naming the limit)."""

    max_body_bytes: int = 64 << 20
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = 4096 * 4096
    max_images: int = 8
    max_prompt_chars: int = 32_000
    allow_local_files: Path | None = None


def _image_bytes(url: str, limits: Limits, param: str) -> bytes:
    m = _DATA_URI.fullmatch(url.strip())
    if m is None:
        if limits.allow_local_files is None or re.match(r"[a-z][a-z0-9+.-]*://", url) and not url.startswith("file://"):
            raise APIError(400, f"{param}: only data URIs are accepted (data:image/...;base64,...); "
                           "local paths need the server's --allow-local-files DIR", param)
        return _local_file(url, limits, param)
    if m.group("mime") and not m.group("mime").startswith("image/"):
        raise APIError(400, f"{param}: data URI of type {m.group('mime')} is not an image", param)
    if len(m.group("data")) * 3 // 4 > limits.max_image_bytes:
        raise APIError(413, f"{param}: image is larger than {limits.max_image_bytes:,} bytes", param)
    try:
        return base64.b64decode(m.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data URI is not valid base64", param) from None


def _local_file(url: str, limits: Limits, param: str) -> bytes:
    path = Path(url.removeprefix("file://")).expanduser()
    root = limits.allow_local_files.resolve()
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(root):
        raise APIError(400, f"{param}: {url} is outside the server's --allow-local-files folder", param)
    if not resolved.is_file():
        raise APIError(400, f"{param}: {url} is not a file under --allow-local-files", param)
    if resolved.stat().st_size > limits.max_image_bytes:
        raise APIError(413, f"{param}: image is larger than {limits.max_image_bytes:,} bytes", param)
    return resolved.read_bytes()


def decode_image(url: str, limits: Limits, param: str) -> Image.Image:
    """An `image_url` as an RGB image; 413 when too large (bytes or pixels), else 400 when bad."""
    data = _image_bytes(url, limits, param)
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            w, h = header.size
    except Image.DecompressionBombError as exc:  # a header declaring more pixels than PIL opens
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        n = f"{int(declared.group(1)):,}" if declared else "too many"
        raise APIError(413, f"{param}: image declares {n} pixels, more than {limits.max_image_pixels:,}", param) from None
    except Exception:  # noqa: BLE001 - not an image at all: load_image words the error
        w = h = 0
    if w * h > limits.max_image_pixels:
        raise APIError(413, f"{param}: image has {w}x{h} pixels, more than {limits.max_image_pixels:,}", param)
    try:
        return load_image(data, max_pixels=limits.max_image_pixels, max_bytes=limits.max_image_bytes)
    except ImageError as exc:
        raise APIError(400, f"{param}: {exc}", param) from None


def request_images(req: ChatRequest, limits: Limits) -> list[Image.Image]:
    parts = [(i, j, p) for i, m in enumerate(req.messages) if not isinstance(m.content, str)
             for j, p in enumerate(m.content) if isinstance(p, ImagePart)]
    if len(parts) > limits.max_images:
        raise APIError(400, f"{len(parts)} images in one request; the server takes at most {limits.max_images}",
                       "messages")
    return [decode_image(p.image_url.url, limits, f"messages[{i}].content[{j}].image_url") for i, j, p in parts]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.text for p in content if isinstance(p, TextPart))


def prompt_text(req: ChatRequest) -> str:
    """The PaliGemma prompt: the PaLI task's prefix, or the last user message's text."""
    if req.vlmkit is not None:
        t = req.vlmkit
        return build_prompt(t.task, lang=t.lang, question=t.question, answer=t.answer, objects=t.objects)
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise APIError(400, "messages: no user message", "messages")
    text = _text(users[-1].content).strip()
    if not text:
        raise APIError(400, "messages: the last user message has no text (PaliGemma's prompt is that text)",
                       "messages")
    return text


def chat_messages(req: ChatRequest) -> list[dict]:
    """The conversation in transformers' chat-template format (image parts become {"type": "image"})."""
    out = []
    for m in req.messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": m.role, "content": [
                text_part(p.text) if isinstance(p, TextPart) else {"type": "image"}
                for p in m.content]})
    return out


def mask_png(mask) -> str:
    """A bool mask [H, W] as a data URI of a grayscale PNG of H x W: 255 inside, 0 outside."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype("uint8") * 255, mode="L").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def task_output(task: str, text: str, size: tuple[int, int], mask_vae=None) -> dict:
    """Parsed boxes (and segment codes) of a PaLI task answer, in pixels of an image of `size`.

    With `mask_vae` (a `vlmkit.tasks.segmentation.MaskVAE`) every mask entry also gets `png`:
    `mask_png` of the object's decoded mask over the whole image (None for an object without
    codes)."""
    w, h = size
    if task == "detect":
        parsed = parse_detections(text, w, h)
        boxes, masks, errors = parsed.boxes, [], parsed.errors
    elif task == "segment":
        parsed = parse_segmentations(text, w, h)
        boxes, errors = [o.box for o in parsed.objects], parsed.errors
        masks = [{"label": o.box.label, "codes": list(o.codes) if o.codes else None} for o in parsed.objects]
        if mask_vae is not None and masks:
            from vlmkit.tasks.segmentation import decode_object_masks

            decoded = decode_object_masks(mask_vae, [o.codes for o in parsed.objects], boxes, w, h)
            for entry, mask in zip(masks, decoded):
                entry["png"] = None if mask is None else mask_png(mask)
    else:
        boxes, masks, errors = [], [], []
    return {"task": task, "boxes": [{"label": b.label, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
                                    for b in boxes], "masks": masks, "errors": [str(e) for e in errors]}
