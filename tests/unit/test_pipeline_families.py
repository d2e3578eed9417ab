"""Pipeline pieces that every family relies on: the tokenizer of a transformers-saved folder, the
per-image feature cache switch, dtype casting, the processor builder's id check, `vlmkit create`'s
tokenizer extension and the messages parser."""

import base64
import json
import shutil

import numpy as np
import pytest
import torch

from vlmkit.data.conversation import chat_turns, parse_messages
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.data.tokenizer_build import extend_tokenizer
from vlmkit.errors import ConfigError, DataError
from vlmkit.generation import SamplingConfig
from vlmkit.pipeline import load
from vlmkit.weights.create import create_checkpoint

PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    return create_checkpoint(tmp_path_factory.mktemp("llava") / "model", family="llava")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (36, 48, 3), dtype=np.uint8)


def test_transformers_saved_tokenizer(llava_folder, tmp_path):
    """A folder whose tokenizer transformers 5 wrote (as hub checkpoints are) runs; eos and decode
    agree with transformers' tokenizer."""
    tf = pytest.importorskip("transformers")
    folder = tmp_path / "resaved"
    shutil.copytree(llava_folder, folder)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    hf_tok = tf.AutoTokenizer.from_pretrained(llava_folder)
    hf_tok.save_pretrained(folder)
    pipe = load(folder, dtype="float32")
    assert pipe.tokenizer.eos_id == hf_tok.eos_token_id
    ids = torch.randint(0, hf_tok.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    assert pipe.tokenizer.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)
    out = pipe.generate(PROMPT, [_image(0)], SamplingConfig(max_new_tokens=3))
    assert 1 <= len(out.token_ids) <= 3


def test_uncached_layout_equals_cached(llava_folder, monkeypatch):
    """Without `per_image_pixels` the pixels go to the adapter as they are; same tokens, no cache."""
    pipe = load(llava_folder, dtype="float32")
    sampling = SamplingConfig(max_new_tokens=6)
    cached = pipe.generate_batch([PROMPT, "<image><image> two"], [[_image(1)], [_image(2), _image(3)]], sampling)
    assert len(pipe._features) == 3
    pipe._features.clear()
    monkeypatch.setattr(type(pipe.processor), "per_image_pixels", False)
    plain = pipe.generate_batch([PROMPT, "<image><image> two"], [[_image(1)], [_image(2), _image(3)]], sampling)
    assert not pipe._features
    assert [r.token_ids for r in plain] == [r.token_ids for r in cached]


def test_bfloat16_pixels_follow_the_model(llava_folder, monkeypatch):
    pipe = load(llava_folder, dtype="bfloat16")
    monkeypatch.setattr(type(pipe.processor), "per_image_pixels", False)
    seen = []
    original = pipe.model.encode_images
    monkeypatch.setattr(pipe.model, "encode_images", lambda px: seen.append(px.dtype) or original(px))
    pipe.generate(PROMPT, [_image(4)], SamplingConfig(max_new_tokens=2))
    assert seen == [torch.bfloat16]


def test_builder_checks_the_image_token_id(llava_folder, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(llava_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_index"] -= 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"the tokenizer's <image> id \d+ != config.json image_token_index \d+"):
        load(folder)


def test_extend_tokenizer(paligemma_tokenizer_dir, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(paligemma_tokenizer_dir, folder)
    before = Tokenizer.from_folder(folder)
    extend_tokenizer(folder, ("<image>",))  # already there: nothing changes
    assert (folder / "tokenizer.model").is_file() and Tokenizer.from_folder(folder).vocab_size == before.vocab_size
    extend_tokenizer(folder, ("<img>", "</img>", "<img>"), chat_template="{{ messages[0]['content'] }}")
    after = Tokenizer.from_folder(folder)
    assert after.vocab_size == before.vocab_size + 2 and not (folder / "tokenizer.model").exists()
    assert after.encode("a<img>b</img>")[1] == before.vocab_size and after.is_special(before.vocab_size + 1)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == "{{ messages[0]['content'] }}"
    assert config["added_tokens_decoder"][str(before.vocab_size)]["content"] == "<img>"
    assert config["additional_special_tokens"][-2:] == ["<img>", "</img>"]


def test_parse_messages_formats():
    png = base64.b64encode(b"\x89PNG fake").decode()
    messages, sources = parse_messages({"messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                                     {"type": "image", "path": "a.png"}, {"type": "text", "text": "hi"}]}]})
    assert messages[0] == {"role": "system", "content": "be brief"}  # strings stay strings, as in transformers
    assert messages[1]["content"][0] == {"type": "image", "url": f"data:image/png;base64,{png}"}
    assert sources == [b"\x89PNG fake", "a.png"]
    with pytest.raises(DataError, match="1 of 2 image parts name a source"):
        parse_messages([{"role": "user", "content": [{"type": "image"}, {"type": "image", "url": "b.png"}]}])
    with pytest.raises(DataError, match="not valid base64"):
        parse_messages([{"role": "user", "content": [{"type": "image", "base64": "###"}]}])


def test_chat_turns():
    turns = chat_turns(["q", "a", "q2"], 2)
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]
    assert turns[0]["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "q", "content": "q"}]
    assert turns[2]["content"] == [{"type": "text", "text": "q2", "content": "q2"}]
    with pytest.raises(DataError, match="odd number"):
        chat_turns(["q", "a"], 1)
