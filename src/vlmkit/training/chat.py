"""Chat data for fine-tuning a `vlm` family: rows, assistant spans and labelled batches.

Rows of a JSONL manifest, in the transformers / OpenAI message format:

    {"images": ["a.png", ...], "videos": [["f0.png", "f1.png", ...], ...],
     "messages": [{"role": "system" | "user" | "assistant",
                   "content": "text" | [{"type": "text", "text": "..."}, {"type": "image"},
                                        {"type": "video"}, ...]}, ...]}

The k-th `{"type": "image"}` item is the k-th of `images`, the k-th `{"type": "video"}` the k-th of
`videos` (optional; for families whose processor takes videos, Qwen2-VL / Qwen2.5-VL). A video is
its frame paths in time order (taken whole), a folder of frames / an animated image / a video file
(sampled as `vlmkit generate --video` samples them: at most `data.video_frames` frames spanning the
clip, default 16, rounded to the model's temporal patch by `vlmkit.data.video.frame_count`; or
`data.video_fps` frames a second within that, `FrameRule`), or either as
``{"frames": ..., "fps": 2.0}`` (the sampled rate; Qwen2.5-VL spaces temporal positions by it).
A PaliGemma-style row ``{"image": path | [paths], "prefix", "suffix"}`` is read as one user turn
(its images, then the prefix) answered by the suffix. String content is given to the template as one text item, the form
every VLM template reads (LLaVA's and SmolVLM's iterate over content items).

Labels. A conversation is rendered with the checkpoint's chat template; the characters of each
assistant turn are found as transformers' `return_assistant_tokens_mask` finds them, from the
template's `{% generation %}` blocks. A template without them gets the turn by rendering the
conversation up to the turn with the generation prompt and through the turn without it: the
difference is the answer and the template's end-of-turn text (which the model must learn to emit).
The family's processor expands the image placeholders (`encode_images`); a token is an assistant
token when its character offsets overlap an assistant span (shifted past the expanded
placeholders before it), and labels are -100 everywhere else (image tokens and padding included).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vlmkit.data.chat_template import ChatTemplate
from vlmkit.data.conversation import text_part
from vlmkit.data.datasets import JsonlDataset, measure_row
from vlmkit.data.image import load_image
from vlmkit.data.processor import IGNORE_INDEX
from vlmkit.data.processors.common import TypeCProcessor, images_per_prompt
from vlmkit.data.video import FrameRule, Video
from vlmkit.errors import DataError, ImageError, VlmkitError

ROLES = ("system", "user", "assistant")
MEDIA = ("image", "video")  # content item types that take an input, in the order the items come
Span = tuple[int, int]


def _content_problem(content, where: str) -> str | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
        return f"{where} content must be a string or a list of {{type: text|image}} items"
    for item in content:
        if item.get("type") == "text" and not isinstance(item.get("text"), str):
            return f'{where} has a text item without a "text" string'
        if item.get("type") not in ("text", *MEDIA):
            return f"{where} has an item of type {item.get('type')!r} (text, image or video)"
    return None


def _frames_of(video):
    """A "videos" entry's frames: its list of frame paths or its source path."""
    return video.get("frames") if isinstance(video, dict) else video


def video_entry(video) -> tuple[list[str] | str, float | None]:
    """(frames: a list of frame paths or a source path, fps or None) of a checked "videos" entry."""
    return _frames_of(video), video.get("fps") if isinstance(video, dict) else None


def _videos_problem(videos) -> tuple[str, str] | None:
    """(skip reason, what is wrong) of a row's "videos" (see the module doc), or None."""
    if not isinstance(videos, list):
        return "missing_field", '"videos" must be a list of videos'
    for i, video in enumerate(videos):
        frames, fps = video_entry(video)
        if isinstance(frames, list) and not frames:
            return "bad_video", f"video {i} has zero frames"
        if not (isinstance(frames, str) and frames or isinstance(frames, list)
                and all(isinstance(p, str) for p in frames)):
            return "missing_field", f'video {i} must be a list of frame paths, a path, or {{"frames", "fps"}}'
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
            return "bad_video", f"video {i} has fps {fps!r} (a number > 0)"
    return None


def _media_count(messages: list[dict], kind: str) -> int:
    return sum(1 for m in messages if isinstance(m["content"], list) for c in m["content"] if c["type"] == kind)


def chat_problem(row: dict) -> tuple[str, str] | None:
    """(skip reason, what is wrong) of a chat row ({"images", "videos", "messages"}), or None."""
    images, messages = row.get("images", []), row.get("messages")
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        return "missing_field", '"images" must be a list of paths'
    if problem := _videos_problem(row.get("videos", [])):
        return problem
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "missing_field", '"messages" must be a non-empty list of {role, content} objects'
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            return "bad_message", f"message {i} has role {m.get('role')!r} (one of {', '.join(ROLES)})"
        problem = _content_problem(m.get("content"), f"message {i}")
        if problem:
            return "bad_message", problem
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant", "has no assistant turn to train on"
    for kind, given in (("image", images), ("video", row.get("videos", []))):
        if (n_items := _media_count(messages, kind)) != len(given):
            return f"{kind}_count", (f'has {len(given)} {kind}(s) but its messages hold {n_items} '
                                     f'{{"type": "{kind}"}} item(s)')
    return None


def read_video(entry, root: Path, rule: FrameRule = FrameRule()) -> Video:
    """One "videos" entry of a row (see the module doc; paths relative to `root`) -> `Video`; a source
    path is sampled by `rule`, a list of frames is taken whole.

    Raises:
        ImageError: a frame or the source is missing or unreadable, or a source gives no frames.
    """
    frames, fps = video_entry(entry)
    if isinstance(frames, str):
        clip = rule.sample(root / frames)
        return Video(clip.frames, fps=fps or clip.fps)
    return Video([load_image(root / p) for p in frames], fps=fps)


def listed_frames(row: dict) -> list[str]:
    """The frame paths (or member names) a chat row's videos list, in order (not its video sources)."""
    return [p for f in map(_frames_of, row.get("videos", [])) if isinstance(f, list) for p in f]


def video_problem(row: dict, processor, root: Path | None, rule: FrameRule = FrameRule()) -> tuple[str, str] | None:
    """A chat row with videos for a `processor` without video inputs (None: not known yet), or, with a
    `root` (validating), a video source under it that gives no frames; None when neither."""
    videos = row.get("videos") or []
    if videos and processor is not None and not getattr(processor, "takes_videos", False):
        return "bad_video", f"has videos, but the {type(processor).__name__} takes images only"
    for entry in map(_frames_of, videos):
        if root is not None and isinstance(entry, str):  # list frames are checked as images
            try:
                rule.sample(root / entry)
            except (ImageError, OSError) as e:
                return "unreadable_image", f"names video {root / entry}, which cannot be sampled ({e})"
    return None


def chat_sample(row: dict, image: Callable[[str], object], video: Callable[[object], Video]) -> dict:
    """{"messages", "images"} of a chat row: `image(path)` of its images and `video(entry)` of its
    videos, in the order their items come in the messages (what `ChatCollator` takes)."""
    messages, _ = as_conversation(row)
    images = iter([image(p) for p in row.get("images", [])])
    videos = iter([video(v) for v in row.get("videos", [])])
    kinds = [c["type"] for m in messages if isinstance(m["content"], list) for c in m["content"] if c["type"] in MEDIA]
    return {"messages": messages, "images": [next(videos if k == "video" else images) for k in kinds]}


def as_conversation(row: dict) -> tuple[list[dict], list]:
    """(messages with list content, image sources) of a chat row or a prefix/suffix row."""
    if "messages" not in row:
        images = row["image"] if isinstance(row["image"], list) else [row["image"]]
        user = [{"type": "image"} for _ in images] + [{"type": "text", "text": row["prefix"]}]
        return [{"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": row["suffix"]}]}], images
    messages = [{**m, "content": m["content"] if isinstance(m["content"], str) else [dict(c) for c in m["content"]]}
                for m in row["messages"]]
    return messages, list(row.get("images", []))


def _texts(message: dict) -> list[str]:
    content = message["content"]
    return [content] if isinstance(content, str) else [c["text"] for c in content if c["type"] == "text"]


def _as_items(messages: Sequence[dict]) -> list[dict]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
            for m in messages]


def _with_content_keys(messages: Sequence[dict]) -> list[dict]:
    """Text items also under "content" (`text_part`), the key mistral-community/pixtral-12b's template reads."""
    return [m if isinstance(m["content"], str) else
            {**m, "content": [{**c, **text_part(c["text"])} if c["type"] == "text" else c for c in m["content"]]}
            for m in messages]


def render_conversation(template: ChatTemplate, messages: Sequence[dict]) -> tuple[list[dict], str, list[Span]]:
    """(messages in the form the template renders, the rendered text, the generation-block spans):
    as written, else with string contents as text items (see the module doc), else with text items'
    text under "content" too (Pixtral's template).

    Raises:
        DataError: the template renders some message's text in neither form.
    """
    failure = None
    for form in (list(messages), _as_items(messages), _with_content_keys(messages)):
        try:
            rendered, spans = template.render_spans(form)
        except VlmkitError as e:  # e.g. a template that concatenates string content
            failure = str(e)
            continue
        # strip: templates may trim a message's whitespace, which is not losing its text.
        missing = next((i for i, m in enumerate(form) for t in _texts(m) if t.strip() not in rendered), None)
        if missing is None:
            return form, rendered, spans
        failure = f"chat template {template.name} does not render the text of message {missing}"
    raise DataError(failure)


def assistant_spans(template: ChatTemplate, messages: Sequence[dict]) -> tuple[str, list[Span]]:
    """(rendered conversation, [start, end) character spans of its assistant turns); see module doc.

    Raises:
        DataError: the template has no generation blocks and does not render the conversation up
            to an assistant turn as a prefix of the whole (so the turn cannot be located).
    """
    messages, text, spans = render_conversation(template, messages)
    if spans:
        return text, spans
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        through = template.render(messages[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise DataError(f"chat template {template.name} does not render the conversation up to assistant "
                            f"message {i} as a prefix of the whole; its assistant tokens cannot be located")
        spans.append((len(before), len(through)))
    return text, spans


def expand_with_spans(text: str, placeholder: str, expansions: Sequence[str],
                      spans: Sequence[Span]) -> tuple[str, list[Span]]:
    """Replace the k-th `placeholder` of `text` by `expansions[k]`; `spans` moved with the text
    after each replaced placeholder (as transformers shifts them past expanded image tokens)."""
    pieces = text.split(placeholder)
    out, ends, gained = [pieces[0]], [], [0]
    pos = len(pieces[0])
    for expansion, piece in zip(expansions, pieces[1:]):
        pos += len(placeholder)
        ends.append(pos)
        gained.append(gained[-1] + len(expansion) - len(placeholder))
        out += [expansion, piece]
        pos += len(piece)

    def shift(c: int) -> int:
        return c + gained[bisect.bisect_right(ends, c)]

    return "".join(out), [(shift(s), shift(e)) for s, e in spans]


def token_mask(offsets: Sequence[Span], spans: Sequence[Span]) -> list[bool]:
    """True for each token whose character offsets overlap a span (zero-width tokens never do)."""
    return [any(start < e and end > s for s, e in spans) for start, end in offsets]


class ChatCollator:
    """Samples ({"messages", "images"} as `ChatJsonlDataset` gives them) -> one right-padded batch:
    the processor's image tensors, input_ids / attention_mask / labels int64 [B, T]."""

    def __init__(self, processor: TypeCProcessor, template: ChatTemplate):
        self.processor, self.template = processor, template

    def _one(self, sample: dict) -> tuple[str, list[Span]]:
        """(rendered text, trained character spans) of one sample."""
        return assistant_spans(self.template, sample["messages"])

    def _texts(self, samples: list[dict]) -> tuple[list[str], list[list[Span]]]:
        """(rendered conversations with every placeholder spelt as the processor's own, e.g. Qwen2-VL's
        `<|video_pad|>` as `<|image_pad|>`, their assistant spans moved with the text)."""
        proc, texts, spans = self.processor, [], []
        for sample in samples:
            text, row_spans = self._one(sample)
            for alias in proc.aliases:
                text, row_spans = expand_with_spans(text, alias, [proc.placeholder] * text.count(alias), row_spans)
            texts.append(text)
            spans.append(row_spans)
        return texts, spans

    def encode(self, samples: list[dict]) -> tuple[dict[str, torch.Tensor], list[list[int]], list[list[int]]]:
        """(image tensors, token ids per sample, labels per sample), unpadded."""
        texts, spans = self._texts(samples)
        proc, tok = self.processor, self.processor.tokenizer
        groups = images_per_prompt(texts, [s["images"] for s in samples], proc.placeholder)
        out, expansions = proc.encode_images(groups) if any(groups) else ({}, [])
        ids, labels, k, media = [], [], 0, proc.media_token_ids
        for text, group, row_spans in zip(texts, groups, spans):
            expanded, shifted = expand_with_spans(text, proc.placeholder, expansions[k:k + len(group)], row_spans)
            k += len(group)
            # As processor.chat: no BOS from the tokenizer when the template wrote it already.
            add_special = not (tok.bos_token is not None and text.startswith(tok.bos_token))
            enc = tok.tok.encode(expanded, add_special_tokens=add_special)
            trained = token_mask(enc.offsets, shifted)
            ids.append(list(enc.ids))
            labels.append([t if y and t not in media else IGNORE_INDEX for t, y in zip(enc.ids, trained)])
        return out, ids, labels

    def length(self, sample: dict) -> int:
        """Tokens of one sample (image tokens included)."""
        return len(self.encode([sample])[1][0])

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        out, ids, labels = self.encode(samples)
        longest = max(len(r) for r in ids)
        pad = self.processor.tokenizer.pad_id or 0  # never attended to, never a target
        batch = {"input_ids": torch.full((len(ids), longest), pad, dtype=torch.long),
                 "attention_mask": torch.zeros(len(ids), longest, dtype=torch.long),
                 "labels": torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.long)}
        for b, (row, lab) in enumerate(zip(ids, labels)):
            batch["input_ids"][b, : len(row)] = torch.tensor(row, dtype=torch.long)
            batch["attention_mask"][b, : len(row)] = 1
            batch["labels"][b, : len(row)] = torch.tensor(lab, dtype=torch.long)
        return {**batch, **out}


class ChatJsonlDataset(JsonlDataset):
    """`JsonlDataset` of chat rows and prefix/suffix rows (see the module doc): the same
    validation, skipping and error lines; samples are {"messages", "images": [RGB PIL | Video]} (the
    inputs of the image and video items in the order the items come; and "num_tokens" with a
    `budget`). `collator` (when given) measures rows exactly for `max_len` and `budget`, and refuses
    video rows when its processor takes no videos. A video source gives at most `video_frames`
    frames, rounded to the processor's temporal patch, or `video_fps` a second within that (`FrameRule`)."""

    def __init__(self, manifest: str | Path, image_root: str | Path | None = None, validate: bool = True, *,
                 max_len: int | None = None, collator: ChatCollator | None = None, bad_rows: str = "skip",
                 budget: int | None = None, video_frames: int = 16, video_fps: float | None = None):
        self._collator, self._validate = collator, validate
        processor = collator.processor if collator is not None else None
        self.frames = FrameRule.of(video_frames, processor, video_fps, "data.video_frames")
        super().__init__(manifest, image_root, validate, max_len=max_len, length_fn=self._tokens, bad_rows=bad_rows,
                         budget=budget)

    def _tokens(self, row: dict) -> int:
        if self._collator is None:
            raise DataError("data.max_length needs the processor to count a chat row's tokens")
        try:
            sample = self._sample(row)
        except (ImageError, OSError):
            return 0  # the image check that follows reports the row
        return self._collator.length(sample)

    def _row_problem(self, row: object, max_len: int | None) -> tuple[str, str] | None:
        if not isinstance(row, dict) or "messages" not in row:
            return super()._row_problem(row, max_len)
        processor = self._collator.processor if self._collator is not None else None
        root = self.image_root if self._validate else None
        problem = chat_problem(row) or video_problem(row, processor, root, self.frames)
        if problem is not None or max_len is None:
            return problem
        n, problem = measure_row(self.length_fn, row)  # `self._tokens`, remembered for the budget
        return problem or (("too_long", f"is longer than max_len={max_len}") if n > max_len else None)

    def _paths(self, row: dict) -> list[Path]:
        """The image files to check: the row's images and the frames its videos list."""
        if "messages" not in row:
            return super()._paths(row)
        return [self.image_root / p for p in [*row.get("images", []), *listed_frames(row)]]

    def _sample(self, row: dict) -> dict:
        if "messages" not in row:
            return {"messages": as_conversation(row)[0], "images": [load_image(p) for p in super()._paths(row)]}
        root = self.image_root
        return chat_sample(row, lambda p: load_image(root / p), lambda v: read_video(v, root, self.frames))

    def __getitem__(self, index: int) -> dict:
        return self._with_length(index, self._sample(self.rows[index]))
