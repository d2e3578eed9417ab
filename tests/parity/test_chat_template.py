"""ChatTemplate vs transformers' apply_chat_template(tokenize=False) on the templates of real checkpoints.

The templates in tests/assets/chat_templates/ are the published ones (sources in the README there).
Every conversation must render to the identical string, with and without the generation prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmkit.data.chat_template import ChatTemplate, ChatTemplateError, load_chat_template

transformers = pytest.importorskip("transformers")

ASSETS = Path(__file__).parents[1] / "assets" / "chat_templates"
TEMPLATES = ["llava-1.5", "llava-v1.6-mistral", "smolvlm", "internvl3", "chatml", "mistral3", "pixtral"]
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def _text(t):
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}

LIST_CONVERSATIONS = {
    "one_image": [{"role": "user", "content": [IMAGE, _text("What is shown here?")]}],
    "system_prompt": [
        {"role": "system", "content": [_text("You are a careful assistant.")]},
        {"role": "user", "content": [IMAGE, _text("Describe the picture.")]},
    ],
    "multi_turn": [
        {"role": "user", "content": [IMAGE, _text("How many cats?")]},
        {"role": "assistant", "content": [_text("Two cats.")]},
        {"role": "user", "content": [_text("And dogs? Answer in one word.")]},
    ],
    "several_images": [
        {"role": "user", "content": [IMAGE, IMAGE, _text("Compare these two images."), IMAGE]},
    ],
    "text_first_unicode": [
        {"role": "user", "content": [_text("Qu'y a-t-il ici ? <b>«»</b>\n  indented"), IMAGE]},
        {"role": "assistant", "content": [_text("Un chat.")]},
    ],
}

STRING_CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Hello there"}],
    "system_multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
    "none_field_dropped": [{"role": "user", "content": "hi", "name": None}],
    "assistant_last": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    "unicode_markup": [{"role": "user", "content": "<b>«é»</b> & \n  next line"}],
}



def _content(t):
    """A text part as pixtral-12b's template reads it ("content", not "text")."""
    return {"type": "text", "content": t}


# Pixtral: string system prompt (opens the last user turn), text parts under "content", string assistant turns
# (the template appends eos_token to them); "text"-keyed parts render as nothing, in transformers as here.
PIXTRAL_CONVERSATIONS = {
    "one_image": [{"role": "user", "content": [IMAGE, _content("What is shown here?")]}],
    "system_two_images": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": [_content("Compare "), IMAGE, _content(" and "), IMAGE]},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [IMAGE, _content("How many cats?")]},
        {"role": "assistant", "content": "Two cats."},
        {"role": "user", "content": [_content("Qu'y a-t-il ici ? <b>«»</b>\n  indented"), IMAGE]},
    ],
    "text_key_parts": [{"role": "user", "content": [IMAGE, _text("dropped by this template")]}],
}

# Which conversation styles each template accepts (string content: only the chatml-style ones read it;
# llava-v1.6-mistral raises on any role other than system/user/assistant).
CONVERSATIONS = {
    "llava-1.5": LIST_CONVERSATIONS,
    "llava-v1.6-mistral": LIST_CONVERSATIONS,
    "smolvlm": LIST_CONVERSATIONS,
    "internvl3": {**LIST_CONVERSATIONS, **STRING_CONVERSATIONS},
    "chatml": STRING_CONVERSATIONS,
    # Mistral 3 prepends a string system prompt to the last user turn ("[INST]" + system): a list one is an error.
    "mistral3": {**{k: v for k, v in LIST_CONVERSATIONS.items() if k != "system_prompt"}, **STRING_CONVERSATIONS},
    "pixtral": {**PIXTRAL_CONVERSATIONS, **STRING_CONVERSATIONS},
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)


def _source(name: str) -> str:
    return (ASSETS / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendering_matches_transformers(hf_tokenizer, name, generation_prompt):
    ours = ChatTemplate(source=_source(name), name=name, special_tokens=SPECIALS)
    conversations = CONVERSATIONS[name]
    assert len(conversations) >= 5
    for key, messages in conversations.items():
        expected = hf_tokenizer.apply_chat_template(messages, chat_template=_source(name), tokenize=False,
                                                    add_generation_prompt=generation_prompt)
        got = ours.render(messages, add_generation_prompt=generation_prompt)
        assert got == expected, (name, key)
        assert got  # every conversation renders something


def test_pixtral_layout():
    """pixtral-12b's turns: BOS once, the system prompt inside the last [INST], eos after an assistant turn."""
    ours = ChatTemplate(source=_source("pixtral"), special_tokens=SPECIALS)
    assert ours.render(PIXTRAL_CONVERSATIONS["system_two_images"]) == (
        "<s>[INST]You are a careful assistant.\n\nCompare [IMG] and [IMG][/INST]")
    assert ours.render(PIXTRAL_CONVERSATIONS["system_multi_turn"]).startswith(
        "<s>[INST][IMG]How many cats?[/INST]Two cats.</s>[INST]Be brief.\n\nQu'y")
    with pytest.raises(ChatTemplateError, match="conversation roles must alternate"):
        ours.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_environment_features(hf_tokenizer):
    """tojson without HTML escaping, loopcontrols, namespace, strftime_now, special tokens, kwargs."""
    source = ("{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}"
              "{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}|{% endfor %}{{ ns.n }}"
              "{{ extra }}{{ undefined_var }}{{ strftime_now('%Y') | length }}"
              "{% for k in dict(a=1) %}{{ k }}{% endfor %}\n  {% if add_generation_prompt %}GO{% endif %}")
    messages = [{"role": "user", "content": "<a & b> é"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": "y"}]
    expected = hf_tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False,
                                                add_generation_prompt=True, extra="!")
    got = ChatTemplate(source=source, special_tokens=SPECIALS).render(messages, add_generation_prompt=True, extra="!")
    assert got == expected
    assert '"<a & b> é"' in got and got.startswith("<s>")


def _write_folder(folder: Path, *, json_t=None, jinja_t=None, config_t=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>"}
    if config_t is not None:
        config["chat_template"] = config_t
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if json_t is not None:
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": json_t}))
    if jinja_t is not None:
        (folder / "chat_template.jinja").write_text(jinja_t)
    return folder


def test_file_precedence(tmp_path):
    """chat_template.json > chat_template.jinja > tokenizer_config.json, as transformers resolves them."""
    folder = _write_folder(tmp_path / "all", json_t="J{{ bos_token }}", jinja_t="R", config_t="C")
    assert load_chat_template(folder).render([]) == "J<s>"
    folder = _write_folder(tmp_path / "two", jinja_t="R{{ eos_token }}", config_t="C")
    assert load_chat_template(folder).render([]) == "R</s>"
    folder = _write_folder(tmp_path / "one", config_t=[{"name": "default", "template": "C"},
                                                       {"name": "tool_use", "template": "T"}])
    assert load_chat_template(folder).render([]) == "C"


def test_file_precedence_matches_transformers(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "<image>": 1},
                                                                             unk_token="<unk>")),
                                  unk_token="<unk>")
    folder = tmp_path / "hf"
    LlavaProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok, patch_size=14).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "C"}))
    (folder / "chat_template.jinja").write_text("R")
    assert AutoTokenizer.from_pretrained(folder).chat_template == load_chat_template(folder).source == "R"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert LlavaProcessor.from_pretrained(folder).chat_template == load_chat_template(folder).source == "J"


def test_errors(tmp_path):
    mistral = ChatTemplate(source=_source("llava-v1.6-mistral"), name="llava-v1.6-mistral.jinja")
    with pytest.raises(ChatTemplateError, match=r"llava-v1.6-mistral.jinja failed to render: Only user and "
                                                r"assistant roles are supported!$"):
        mistral.render([{"role": "tool", "content": [_text("x")]}])
    with pytest.raises(ChatTemplateError, match="broken.jinja does not parse"):
        ChatTemplate(source="{% for m in messages %}{{ m }", name="broken.jinja")
    with pytest.raises(ChatTemplateError, match="failed to render"):
        ChatTemplate(source="{{ messages[0]['content'] + 1 }}").render([{"role": "user", "content": "a"}])
    with pytest.raises(ChatTemplateError, match="message 0 must be a dict"):
        mistral.render(["hello"])
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        load_chat_template(_write_folder(tmp_path / "none"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "chat_template.json").write_text("{not json")
    with pytest.raises(ChatTemplateError, match="cannot read"):
        load_chat_template(tmp_path / "bad")
