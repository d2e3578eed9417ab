"""Chat rows for training (`vlmkit.training.chat`): row checks, conversations, assistant spans with
and without `{% generation %}` blocks, placeholder expansion with spans, the token mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.data.chat_template import ChatTemplate
from vlmkit.errors import DataError
from vlmkit.training.chat import (ChatJsonlDataset, as_conversation, assistant_spans, chat_problem,
                                  expand_with_spans, token_mask)

TEMPLATES = Path(__file__).parents[1] / "assets" / "chat_templates"


def template(name: str) -> ChatTemplate:
    return ChatTemplate(source=(TEMPLATES / f"{name}.jinja").read_text(), name=name,
                        special_tokens={"bos_token": "<s>", "eos_token": "</s>"})


def text(t: str) -> dict:
    return {"type": "text", "text": t}


CHAT = [{"role": "system", "content": [text("be brief")]},
        {"role": "user", "content": [{"type": "image"}, text("what is it")]},
        {"role": "assistant", "content": [text("a red circle")]},
        {"role": "user", "content": [text("where")]},
        {"role": "assistant", "content": [text("on the left")]}]


def test_generation_blocks_give_the_assistant_text():
    rendered, spans = assistant_spans(template("llava-1.5"), CHAT)
    assert [rendered[s:e] for s, e in spans] == ["a red circle ", "on the left "]


# The same conversation with string contents (what a text-only template such as chatml reads).
STRING_CHAT = [{**m, "content": " ".join(c["text"] for c in m["content"] if c["type"] == "text")} for m in CHAT]


@pytest.mark.parametrize("name,chat,ends", [("smolvlm", CHAT, "<end_of_utterance>\n"),
                                            ("smolvlm", STRING_CHAT, "<end_of_utterance>\n"),
                                            ("chatml", STRING_CHAT, "<|im_end|>\n")])
def test_templates_without_generation_blocks_give_answer_and_end_of_turn(name, chat, ends):
    """The turn is what rendering through it adds to rendering up to it with the generation prompt."""
    rendered, spans = assistant_spans(template(name), chat)
    got = [rendered[s:e] for s, e in spans]
    assert [g.strip().removesuffix(ends.strip()).strip() for g in got] == ["a red circle", "on the left"]
    assert all(g.endswith(ends) for g in got)


def test_string_content_goes_as_a_text_item_to_templates_that_skip_strings():
    """LLaVA's template skips a plain-string content; the text must not silently disappear."""
    rendered, spans = assistant_spans(template("llava-1.5"), STRING_CHAT)
    assert [rendered[s:e] for s, e in spans] == ["a red circle ", "on the left "]
    with pytest.raises(DataError, match="chatml failed to render"):
        assistant_spans(template("chatml"), CHAT)  # list content, a template that reads strings only


def test_template_whose_prefixes_are_not_prefixes_fails_in_one_line():
    odd = ChatTemplate(source="{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}>{% endif %}", name="odd")
    with pytest.raises(DataError, match="does not render the conversation up to assistant message 2"):
        assistant_spans(odd, STRING_CHAT)


def test_template_that_drops_text_fails_in_one_line():
    silent = ChatTemplate(source="{% for m in messages %}{{ m['role'] }}{% endfor %}", name="silent")
    with pytest.raises(DataError, match="silent does not render the text of message 0"):
        assistant_spans(silent, CHAT)


def test_expansion_moves_spans_past_placeholders():
    s = "A<image>B<image>CD"
    spans = [(8, 9), (16, 18)]  # "B" and "CD"
    out, moved = expand_with_spans(s, "<image>", ["xxx", "y"], spans)
    assert out == "AxxxByCD"
    assert [out[a:b] for a, b in moved] == ["B", "CD"]


def test_token_mask_marks_overlapping_tokens_only():
    offsets = [(0, 0), (0, 2), (2, 5), (5, 6), (6, 9)]  # a zero-width special token first
    assert token_mask(offsets, [(3, 6)]) == [False, False, True, True, False]
    assert token_mask(offsets, []) == [False] * 5


@pytest.mark.parametrize("row,reason", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no_assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "bad_message"),
    ({"messages": [{"role": "assistant", "content": [{"type": "audio"}]}]}, "bad_message"),
    ({"messages": [{"role": "assistant", "content": [{"type": "video"}]}]}, "video_count"),
    ({"videos": [[]], "messages": [{"role": "user", "content": [{"type": "video"}]},
                                   {"role": "assistant", "content": "x"}]}, "bad_video"),
    ({"videos": [{"frames": ["a.png"], "fps": 0}], "messages": [{"role": "user", "content": [{"type": "video"}]},
                                                                {"role": "assistant", "content": "x"}]}, "bad_video"),
    ({"videos": [["a.png", 3]], "messages": [{"role": "user", "content": [{"type": "video"}]},
                                             {"role": "assistant", "content": "x"}]}, "missing_field"),
    ({"videos": "a", "messages": [{"role": "assistant", "content": "x"}]}, "missing_field"),
    ({"messages": [{"role": "assistant", "content": [{"type": "text"}]}]}, "bad_message"),
    ({"messages": []}, "missing_field"),
    ({"images": "a.png", "messages": [{"role": "assistant", "content": "x"}]}, "missing_field"),
    ({"images": ["a.png", "b.png"], "messages": [{"role": "user", "content": [{"type": "image"}]},
                                                 {"role": "assistant", "content": "x"}]}, "image_count"),
])
def test_bad_chat_rows_name_their_reason(row, reason):
    assert chat_problem(row)[0] == reason


def test_good_rows_and_prefix_suffix_rows_become_conversations():
    row = {"images": ["a.png"], "messages": [{"role": "user", "content": [{"type": "image"}, text("q")]},
                                             {"role": "assistant", "content": "answer"}]}
    assert chat_problem(row) is None
    messages, images = as_conversation(row)
    assert messages == row["messages"] and messages is not row["messages"] and images == ["a.png"]
    messages, images = as_conversation({"image": ["a.png", "b.png"], "prefix": "caption", "suffix": "a cat"})
    assert images == ["a.png", "b.png"]
    assert messages == [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, text("caption")]},
                        {"role": "assistant", "content": [text("a cat")]}]


def test_dataset_reads_both_layouts_and_skips_bad_rows(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"images": ["a.png"], "messages": [{"role": "user", "content": [{"type": "image"}]},
                                               {"role": "assistant", "content": "red"}]},
            {"image": "a.png", "prefix": "colour", "suffix": "red"},
            {"images": [], "messages": [{"role": "user", "content": "hi"}]},
            {"images": ["missing.png"], "messages": [{"role": "user", "content": [{"type": "image"}]},
                                                     {"role": "assistant", "content": "red"}]}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = ChatJsonlDataset(tmp_path / "rows.jsonl", bad_rows="skip")
    assert len(ds) == 2 and dict(ds.skipped) == {"no_assistant": 1, "missing_image": 1}
    assert [len(ds[i]["images"]) for i in range(2)] == [1, 1]
    assert ds[0]["messages"][1] == {"role": "assistant", "content": "red"}
    assert ds[1]["messages"][1] == {"role": "assistant", "content": [text("red")]}
    with pytest.raises(DataError, match="rows.jsonl:3 has no assistant turn"):
        ChatJsonlDataset(tmp_path / "rows.jsonl", bad_rows="error")


def test_pixtral_template_reads_text_items_under_content():
    """pixtral-12b's template reads a text item's "content": the rows' "text" items are given to it so too."""
    chat = [{"role": "user", "content": [{"type": "image"}, text("what is it")]},
            {"role": "assistant", "content": "a red circle"}]
    rendered, spans = assistant_spans(template("pixtral"), chat)
    assert rendered == "<s>[INST][IMG]what is it[/INST]a red circle</s>"
    assert [rendered[s:e] for s, e in spans] == ["a red circle</s>"]


def test_video_rows_give_their_inputs_in_item_order(tmp_path):
    """images and videos interleave as their items come; a video is its frames (or a folder) with its fps."""
    from vlmkit.data.video import Video

    for k in range(3):
        Image.new("RGB", (8, 6), (40 * k, 0, 0)).save(tmp_path / f"f{k}.png")
    (tmp_path / "clip").mkdir()
    for k in range(2):
        Image.new("RGB", (4, 4), (0, 40 * k, 0)).save(tmp_path / "clip" / f"{k}.png")
    items = [{"type": "video"}, {"type": "image"}, {"type": "video"}, text("q")]
    row = {"images": ["f0.png"], "videos": [{"frames": ["f1.png", "f2.png"], "fps": 2}, "clip"],
           "messages": [{"role": "user", "content": items}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    sample = ChatJsonlDataset(tmp_path / "rows.jsonl")[0]
    first, still, second = sample["images"]
    assert isinstance(first, Video) and first.fps == 2 and len(first.frames) == 2 and first.size == (8, 6)
    assert isinstance(still, Image.Image) and still.getpixel((0, 0)) == (0, 0, 0)
    assert isinstance(second, Video) and second.fps is None and second.size == (4, 4)
