"""PaliGemma task prompts ("prefixes").

PaliGemma (and PaliGemma 2) were trained with a small, fixed prompt syntax per task; the model is
only reliable when it sees exactly that syntax. Sources: the PaliGemma paper (Beyer et al. 2024,
Sec. 3.2.5), the PaliGemma / PaliGemma 2 model cards and Google's "PaliGemma prompt and system
instructions" page, and big_vision's transfer configs (e.g. `strfmt("caption {lang}")`).

Supported task families (`Task`):

=============  ===================================  ==============================================
Task           Prompt                               Notes
=============  ===================================  ==============================================
CAP            ``cap {lang}``                       very raw short caption (PT checkpoints only)
CAPTION        ``caption {lang}``                   short COCO-like caption (PT, mix, transfers)
DESCRIBE       ``describe {lang}``                  longer, more descriptive caption (PT, mix);
                                                    this is PaliGemma 2's "long caption" prompt
OCR            ``ocr``                              text in the image
ANSWER         ``answer {lang} {question}``         VQA
QUESTION       ``question {lang} {answer}``         question generation (PT only)
DETECT         ``detect {obj} ; {obj} ...``         boxes as ``<locY1><locX1><locY2><locX2> obj``
SEGMENT        ``segment {obj} ; {obj} ...``        box + 16 ``<segNNN>`` mask tokens per object
=============  ===================================  ==============================================

Deliberately left out:
- grounded region captioning (``caption <loc..>x4``): it appears in the paper's pretraining mix but
  no released card documents it, so we cannot promise the exact form;
- dataset-specific transfer prefixes (e.g. ScienceQA multiple-choice layouts, video QA prefixes):
  they belong to the fine-tuning recipes that define them, not to the generic task API;
- free-form natural-language prompts for PaliGemma 2 mix: any string works, nothing to build.

The returned prompt has no trailing newline: the tokenizer/processor appends the ``"\\n"`` that
separates prefix from suffix (as transformers' PaliGemmaProcessor and big_vision both do), so
adding it here would double it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from vlmkit.errors import ConfigError

# The 35 languages of COCO-35L (big_vision `coco35l.LANGUAGES`) plus Cusco Quechua ("quz"), the
# extra language of XM3600. These are the `{lang}` codes PaliGemma's multilingual captioning and
# VQA data used. Mostly ISO-639-1; "fil" (Filipino) and "quz" have no two-letter code, so they
# use their ISO-639-2/3 code exactly as the training data did.
LANGUAGES: frozenset[str] = frozenset({
    "ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr",
    "he", "hi", "hr", "hu", "id", "it", "ja", "ko", "mi", "nl", "no", "pl",
    "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh",
})  # fmt: skip

OBJECT_SEPARATOR = " ; "
_WS = re.compile(r"\s+")
# Characters that would break the prompt grammar: ";" separates objects and "<"/">" would let
# a user inject <loc>/<seg> control tokens into the prefix.
_BAD_OBJECT_CHARS = re.compile(r"[;<>]")


class Task(enum.Enum):
    """PaliGemma task families; the value is the prompt keyword."""

    CAP = "cap"
    CAPTION = "caption"
    DESCRIBE = "describe"
    OCR = "ocr"
    ANSWER = "answer"
    QUESTION = "question"
    DETECT = "detect"
    SEGMENT = "segment"

    @property
    def uses_lang(self) -> bool:
        return self in _LANG_TASKS

    @property
    def uses_objects(self) -> bool:
        return self in (Task.DETECT, Task.SEGMENT)


_LANG_TASKS = frozenset({Task.CAP, Task.CAPTION, Task.DESCRIBE, Task.ANSWER, Task.QUESTION})


def _as_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    try:
        return Task(str(task).strip().lower())
    except ValueError:
        known = ", ".join(t.value for t in Task)
        raise ConfigError(f"unknown task {task!r}; expected one of: {known}") from None


def _check_lang(lang: str) -> str:
    code = lang.strip().lower() if isinstance(lang, str) else lang
    if code not in LANGUAGES:
        raise ConfigError(
            f"unknown language code {lang!r}; PaliGemma knows: {', '.join(sorted(LANGUAGES))}"
        )
    return code


def _one_line(text: str | None, name: str, task: Task) -> str:
    """Collapse whitespace (a newline would end the prefix early) and require non-empty text."""
    if text is None or not isinstance(text, str) or not text.strip():
        raise ConfigError(f"task {task.value!r} needs a non-empty `{name}` string")
    return _WS.sub(" ", text).strip()


def _objects_text(objects: Sequence[str] | str | None, task: Task) -> str:
    if isinstance(objects, str):
        objects = [objects]
    if not objects:
        raise ConfigError(f"task {task.value!r} needs at least one object name in `objects`")
    names = []
    for obj in objects:
        name = _one_line(obj if isinstance(obj, str) else None, "objects", task)
        if _BAD_OBJECT_CHARS.search(name):
            raise ConfigError(f"object name {obj!r} must not contain ';', '<' or '>'")
        names.append(name)
    return OBJECT_SEPARATOR.join(names)


def build_prompt(
    task: Task | str,
    *,
    lang: str = "en",
    question: str | None = None,
    answer: str | None = None,
    objects: Sequence[str] | str | None = None,
) -> str:
    """Return the PaliGemma prefix for `task`, e.g. ``"detect cat ; dog"``.

    Args:
        task: a `Task` or its keyword ("caption", "detect", ...).
        lang: language code from `LANGUAGES` (only used by cap/caption/describe/answer/question).
        question: required for `Task.ANSWER`.
        answer: required for `Task.QUESTION`.
        objects: one or more object names for `Task.DETECT` / `Task.SEGMENT`.

    Raises:
        ConfigError: unknown task or language code, a missing/empty required argument, or an
            object name containing ';', '<' or '>'.
    """
    t = _as_task(task)
    if t is Task.OCR:
        return "ocr"
    if t.uses_objects:
        return f"{t.value} {_objects_text(objects, t)}"
    code = _check_lang(lang)
    if t is Task.ANSWER:
        return f"answer {code} {_one_line(question, 'question', t)}"
    if t is Task.QUESTION:
        return f"question {code} {_one_line(answer, 'answer', t)}"
    return f"{t.value} {code}"


def caption_prompt(lang: str = "en") -> str:
    """``caption {lang}``: short caption."""
    return build_prompt(Task.CAPTION, lang=lang)


def describe_prompt(lang: str = "en") -> str:
    """``describe {lang}``: longer caption (PaliGemma 2's long-caption prompt)."""
    return build_prompt(Task.DESCRIBE, lang=lang)


def answer_prompt(question: str, lang: str = "en") -> str:
    """``answer {lang} {question}``: visual question answering."""
    return build_prompt(Task.ANSWER, lang=lang, question=question)


def detect_prompt(objects: Sequence[str] | str) -> str:
    """``detect a ; b``: boxes for each named object."""
    return build_prompt(Task.DETECT, objects=objects)


def segment_prompt(objects: Sequence[str] | str) -> str:
    """``segment a ; b``: box + mask tokens for each named object."""
    return build_prompt(Task.SEGMENT, objects=objects)
