"""PaliGemma task prompts: exact strings and validation."""

import pytest

from vlmkit.errors import ConfigError, VlmkitError
from vlmkit.tasks.prompts import (
    LANGUAGES,
    Task,
    answer_prompt,
    build_prompt,
    caption_prompt,
    detect_prompt,
    segment_prompt,
)


@pytest.mark.parametrize(
    ("task", "kwargs", "expected"),
    [
        (Task.CAP, {"lang": "en"}, "cap en"),
        (Task.CAPTION, {"lang": "es"}, "caption es"),
        ("caption", {}, "caption en"),
        (Task.DESCRIBE, {"lang": "de"}, "describe de"),
        (Task.OCR, {}, "ocr"),
        (Task.ANSWER, {"lang": "en", "question": "what is this?"}, "answer en what is this?"),
        (Task.QUESTION, {"lang": "fr", "answer": "un chat"}, "question fr un chat"),
        (Task.DETECT, {"objects": ["cat"]}, "detect cat"),
        (Task.DETECT, {"objects": ["cat", "red car"]}, "detect cat ; red car"),
        ("SEGMENT", {"objects": "left dog"}, "segment left dog"),
        (Task.SEGMENT, {"objects": ["a", "b"]}, "segment a ; b"),
    ],
)
def test_exact_prompt_strings(task, kwargs, expected):
    assert build_prompt(task, **kwargs) == expected


def test_helpers_match_build_prompt():
    assert caption_prompt("ja") == "caption ja"
    assert answer_prompt("how many?", lang="zh") == "answer zh how many?"
    assert detect_prompt(["x", "y"]) == "detect x ; y"
    assert segment_prompt("x") == "segment x"


def test_language_set_covers_paligemma_training_languages():
    # 35 COCO-35L languages + "quz" from XM3600.
    assert len(LANGUAGES) == 36
    for code in ("en", "fil", "quz", "zh", "mi", "no"):
        assert code in LANGUAGES
    assert build_prompt(Task.CAPTION, lang=" EN ") == "caption en"


@pytest.mark.parametrize("lang", ["xx", "english", "", "EN-us", "zz"])
def test_unknown_language_is_config_error(lang):
    with pytest.raises(ConfigError, match="language"):
        build_prompt(Task.CAPTION, lang=lang)


def test_ocr_and_detect_ignore_lang():
    assert build_prompt(Task.OCR, lang="xx") == "ocr"
    assert build_prompt(Task.DETECT, lang="xx", objects=["cat"]) == "detect cat"


@pytest.mark.parametrize(
    ("task", "kwargs"),
    [
        (Task.ANSWER, {}),
        (Task.ANSWER, {"question": "   "}),
        (Task.QUESTION, {}),
        (Task.DETECT, {}),
        (Task.DETECT, {"objects": []}),
        (Task.SEGMENT, {"objects": ["cat", ""]}),
        (Task.DETECT, {"objects": ["cat ; dog"]}),
        (Task.DETECT, {"objects": ["<loc0001>"]}),
        ("translate", {}),
    ],
)
def test_missing_or_bad_arguments_raise_config_error(task, kwargs):
    with pytest.raises(ConfigError) as info:
        build_prompt(task, **kwargs)
    assert isinstance(info.value, VlmkitError)
    assert "\n" not in str(info.value)


def test_whitespace_is_collapsed_so_prefix_stays_one_line():
    p = build_prompt(Task.ANSWER, question="what\n is\tthis?  ")
    assert p == "answer en what is this?"
    assert build_prompt(Task.DETECT, objects=["  big   dog "]) == "detect big dog"


def test_task_properties():
    assert Task.ANSWER.uses_lang and not Task.OCR.uses_lang
    assert Task.SEGMENT.uses_objects and not Task.CAPTION.uses_objects
