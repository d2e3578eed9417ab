"""Data mixtures: source lists, weighted draws in the stated proportions, exact resume, and the
readers / layouts of text-only and interleaved rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.datasets import JsonlDataset, ShuffledStream
from vlmkit.data.mixture import MixtureSampler, MixtureStream, parse_mixture
from vlmkit.errors import ConfigError, DataError
from vlmkit.training.mixture import document_text
from vlmkit.training.mixture_rows import DocumentRows, TextRows


@pytest.mark.parametrize("weights", [(0.7, 0.2, 0.1), (0.5, 0.5), (3.0, 1.0, 1.0, 5.0)])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_proportions_within_one_percent(weights, seed):
    sampler = MixtureSampler(list(weights), seed)
    n = 10_000
    draws = np.array([sampler.choose(k) for k in range(n)])
    expected = np.asarray(weights) / sum(weights)
    share = np.bincount(draws, minlength=len(weights)) / n
    assert np.abs(share - expected).max() < 0.01
    assert np.array_equal(np.bincount(draws, minlength=len(weights)), sampler.counts(n))


def test_proportions_hold_at_every_prefix():
    """Low discrepancy: after every n draws each source is within a few batches of n * w (independent
    draws drift by ~sqrt(n w (1 - w)), i.e. ~46 at n = 10^4 for w = 0.7)."""
    sampler = MixtureSampler([0.7, 0.2, 0.1], seed=3)
    draws = np.array([sampler.choose(k) for k in range(10_000)])
    onehot = np.eye(3)[draws]  # [n, 3]
    counts = onehot.cumsum(0)
    expected = np.arange(1, len(draws) + 1)[:, None] * np.array([0.7, 0.2, 0.1])
    assert np.abs(counts - expected).max() < 10


def test_draws_are_seeded():
    a, b, c = (MixtureSampler([0.7, 0.3], s) for s in (0, 0, 1))
    seq = [[m.choose(k) for k in range(200)] for m in (a, b, c)]
    assert seq[0] == seq[1] and seq[0] != seq[2]


class _Items(torch.utils.data.Dataset):
    """A map-style dataset of {"source", "i"} items."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"source": self.name, "i": i}


def _mixture(sizes=(5, 3, 2), weights=(0.7, 0.2, 0.1), seed=0, mbs=2, rank=0, world=1):
    from vlmkit.training.collate import BatchStream

    def collate(samples):
        return [(s["source"], s["i"]) for s in samples]

    streams = [BatchStream(ShuffledStream(_Items(f"s{i}", n), seed=i, rank=rank, world_size=world, equal_split=True),
                           None, mbs, collate_fn=collate) for i, n in enumerate(sizes)]
    return MixtureStream(streams, list(weights), seed)


def test_stream_follows_the_sampler_and_rolls_epochs_per_source():
    mix = _mixture()
    batches = [mix.next_batch() for _ in range(40)]
    sources = [b[0][0] for b in batches]
    assert all(len({s for s, _ in b}) == 1 for b in batches)  # one source per micro-batch
    assert sources == [f"s{mix.sampler.choose(k)}" for k in range(40)]
    # s2 (2 rows, batches of 2) is exhausted after each of its batches: every batch is a new epoch,
    # a new permutation of the same rows; s0 (5 rows) rolls over inside a batch.
    s2 = [sorted(i for _, i in b) for b in batches if b[0][0] == "s2"]
    assert len(s2) >= 3 and all(rows == [0, 1] for rows in s2)
    s0 = [i for b in batches if b[0][0] == "s0" for _, i in b]
    assert all(sorted(s0[k:k + 5]) == list(range(5)) for k in range(0, len(s0) - 4, 5))
    assert mix.streams[2].stream.epoch >= 3


def test_resume_mid_epoch_is_exact():
    full = _mixture()
    expected = [full.next_batch() for _ in range(30)]
    first = _mixture()
    got = [first.next_batch() for _ in range(13)]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores survives JSON
    assert any(s["position"] % len(first.streams[i].stream) for i, s in enumerate(state["sources"]))
    resumed = _mixture()
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(17)]
    assert got == expected


def test_resume_on_another_number_of_ranks():
    """2 ranks x 1 sample, resumed on 1 rank x 2 samples: the same global batches follow."""
    sizes = (8, 6, 4)  # even: equal_split drops no row on 2 ranks, so epochs hold the same rows
    ranks = [_mixture(sizes, mbs=1, rank=r, world=2) for r in range(2)]
    for _ in range(7):
        for m in ranks:
            m.next_batch()
    states = json.loads(json.dumps([m.state_dict() for m in ranks]))
    after = [[m.next_batch() for _ in range(12)] for m in ranks]
    single = _mixture(sizes, mbs=2)
    single.load_resplit_state(states)
    for k in range(12):
        assert sorted(single.next_batch()) == sorted(after[0][k] + after[1][k])


def test_resume_refuses_another_mixture():
    state = _mixture().state_dict()
    with pytest.raises(ConfigError, match="data mixture"):
        _mixture(weights=(0.6, 0.3, 0.1)).load_state_dict(state)


# ---- source lists ----------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path) -> Path:
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text('{"text": "hello"}\n')
    return tmp_path


def test_parse_json_and_files(files, monkeypatch):
    monkeypatch.chdir(files)
    text = '[{"source": "a.jsonl", "weight": 0.7}, {"source": "b.jsonl", "weight": 0.3, "kind": "text-only"}]'
    sources = parse_mixture(text)
    assert [(Path(s.source).name, s.weight, s.kind, s.name) for s in sources] == [
        ("a.jsonl", 0.7, "image-text", "a"), ("b.jsonl", 0.3, "text", "b")]
    (files / "sub").mkdir()
    (files / "sub" / "mix.json").write_text(json.dumps({"sources": [{"source": "../a.jsonl", "weight": 1}]}))
    (files / "sub" / "mix.toml").write_text('[[sources]]\nsource = "../b.jsonl"\nweight = 2\nkind = "interleaved"\n')
    assert Path(parse_mixture(str(files / "sub" / "mix.json"))[0].source).resolve() == files / "a.jsonl"
    toml = parse_mixture(str(files / "sub" / "mix.toml"))[0]
    assert (Path(toml.source).resolve(), toml.weight, toml.kind) == (files / "b.jsonl", 2.0, "interleaved")


@pytest.mark.parametrize("value,error,match", [
    ('[{"source": "a.jsonl", "weight": 1', ConfigError, "--data.mixture: .* is not valid JSON"),
    ('[{"source": "a.jsonl", "weight": 1, "kind": "video"}]', ConfigError,
     r"source 0 \(a.jsonl\): unknown kind 'video'"),
    ('[{"source": "a.jsonl", "weight": 0}]', ConfigError, "weight must be a number > 0, got 0"),
    ('[{"source": "a.jsonl", "weight": -1}, {"source": "b.jsonl", "weight": 2}]', ConfigError, "source 0 .*> 0"),
    ('[{"source": "a.jsonl", "weight": "x"}]', ConfigError, 'weight must be a number > 0, got "x"'),
    ('[{"source": "a.jsonl", "weight": 1, "wieght": 2}]', ConfigError, "unknown key 'wieght'"),
    ('[{"source": "missing.jsonl", "weight": 1, "name": "web"}]', DataError,
     r"source 0 \(web\): .*missing.jsonl does not exist"),
    ("[]", ConfigError, "non-empty list of sources"),
    ("nope.yaml", ConfigError, "neither a JSON list of sources nor an existing .json / .toml file"),
])
def test_bad_mixture_is_one_line(files, monkeypatch, value, error, match):
    monkeypatch.chdir(files)
    with pytest.raises(error, match=match) as e:
        parse_mixture(value)
    assert "\n" not in str(e.value)


# ---- readers and layouts ---------------------------------------------------------------------------


def _write(tmp_path: Path, rows: list) -> Path:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "x.png")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_text_rows(tmp_path):
    rows = [{"text": "plain text"}, {"prefix": "q", "suffix": "a"}, "not json",
            {"image": "x.png", "prefix": "q", "suffix": "a"}, {"text": ""},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    chat = TextRows(_write(tmp_path, rows), chat=True)
    assert chat[0] == {"document": ["plain text"], "images": []}
    assert chat[1] == {"prefix": "q", "suffix": "a", "images": []}
    assert chat[2]["messages"][1]["role"] == "assistant" and chat[2]["images"] == []
    assert dict(chat.skipped) == {"bad_json": 1, "has_image": 1, "missing_field": 1}
    prefix_lm = TextRows(tmp_path / "rows.jsonl", chat=False)
    assert len(prefix_lm) == 2 and prefix_lm.skipped["chat_row"] == 1
    with pytest.raises(DataError, match=r"rows.jsonl:2 has an image; put rows with images in an image-text"):
        TextRows(_write(tmp_path, rows[:1] + rows[3:]), chat=True, bad_rows="error")


def test_document_rows(tmp_path):
    rows = [{"texts": ["a cat", None, "on a mat"], "images": [None, "x.png", None]},
            {"texts": ["both", None], "images": ["x.png", "x.png"]},
            {"texts": ["no image"], "images": [None]},
            {"texts": [None, "t"], "images": ["missing.png", None]}]
    docs = DocumentRows(_write(tmp_path, rows), chat=True)
    assert len(docs) == 1 and docs[0]["document"] == ["a cat", None, "on a mat"]
    assert len(docs[0]["images"]) == 1 and docs[0]["images"][0].size == (8, 8)
    assert dict(docs.skipped) == {"bad_place": 1, "no_image": 1, "missing_image": 1}


def test_video_rows_in_text_and_document_sources(tmp_path):
    """A chat row's videos (frame lists, {frames, fps}) become `Video`s in item order in an interleaved
    source; a text-only row with videos, an OBELICS document with "videos" and (with a processor that
    takes images only) a video chat row are bad rows."""
    reply = {"role": "assistant", "content": "ok"}
    items = [{"type": "video"}, {"type": "image"}, {"type": "video"}, {"type": "text", "text": "what"}]
    chat = {"images": ["x.png"], "videos": [["x.png", "x.png"], {"frames": ["x.png"], "fps": 2}],
            "messages": [{"role": "user", "content": items}, reply]}
    rows = [chat, {"texts": ["a", None], "images": [None, "x.png"], "videos": [["x.png"]]},
            {"videos": [["x.png"]], "messages": [{"role": "user", "content": [{"type": "video"}]}, reply]}]
    docs = DocumentRows(_write(tmp_path, rows), chat=True)
    assert dict(docs.skipped) == {"bad_video": 1} and len(docs) == 2
    first, second = docs[0]["images"], docs[1]["images"]
    assert [type(x).__name__ for x in first] == ["Video", "Image", "Video"] and len(second) == 1
    assert [len(first[0].frames), first[0].fps, len(first[2].frames), first[2].fps] == [2, None, 1, 2]

    class ImagesOnly:
        takes_videos = False

    with pytest.raises(DataError, match=r"rows.jsonl:1 has videos, but the ImagesOnly takes images only"):
        DocumentRows(tmp_path / "rows.jsonl", chat=True, processor=ImagesOnly(), bad_rows="error")
    text = TextRows(_write(tmp_path, [*rows, {"text": "plain"}]), chat=True)
    assert dict(text.skipped) == {"has_image": 2, "has_video": 1} and len(text) == 1


def test_document_text_trains_text_and_eos_only():
    text, spans = document_text(["a cat", None, "on a mat"], "<image>", "</s>")
    assert text == "a cat\n<image>\non a mat</s>"
    assert [text[s:e] for s, e in spans] == ["a cat", "on a mat", "</s>"]


def test_paligemma_text_rows_are_image_rows_without_image_tokens():
    """A text row's PaliGemma layout is the image row's minus its <image> block and pixel_values."""
    from vlmkit.data.processor import PaliGemmaProcessor
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.training.mixture import PrefixLMRows
    from vlmkit.weights.registry import bundled_models

    processor = PaliGemmaProcessor(Tokenizer.from_folder(bundled_models()["vlmkit-shapes-tiny"]), 16, 4)
    text = PrefixLMRows(processor)([{"prefix": "caption en", "suffix": "a red circle", "images": []},
                                    {"document": ["a much longer plain text row"], "images": []}])
    image = processor(["caption en"], [Image.new("RGB", (16, 16))], suffixes=["a red circle"], padding_side="right")
    assert "pixel_values" not in text
    n = int(text["attention_mask"][0].sum())
    for key in ("input_ids", "token_type_ids", "labels"):
        assert torch.equal(text[key][0, :n], image[key][0, 4:])  # image[..., :4]: the <image> block
    assert (text["labels"][1] != -100).sum() == (text["token_type_ids"][1] == 1).sum() > 5
    assert PrefixLMRows(processor).length({"document": ["x", None], "images": [None]}) == 4 + len(
        processor(["" ], None, suffixes=["x"])["input_ids"][0])


def test_max_len_uses_the_sample_length(tmp_path):
    rows = [{"text": "short"}, {"text": "a much longer text than the limit"}]
    ds = TextRows(_write(tmp_path, rows), chat=True, max_len=10, length=lambda s: len(s["document"][0]))
    assert [r["text"] for r in ds.rows] == ["short"] and ds.skipped["too_long"] == 1
    assert isinstance(ds, JsonlDataset)


# Qwen2-VL's chat template (content items part), as in Qwen/Qwen2-VL-2B-Instruct's chat_template.json.
QWEN2_VL = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
            "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
            "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
            "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template,placeholder,markup", [
    ("llava-1.5", "<image>", "<image>"),
    ("smolvlm", "<image>", "<image>"),
    (QWEN2_VL, "<|image_pad|>", "<|vision_start|><|image_pad|><|vision_end|>"),
    ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "<image>", "<image>"),  # writes no image: fallback
])
def test_image_markup_is_what_the_template_writes(template, placeholder, markup):
    from vlmkit.data.chat_template import ChatTemplate
    from vlmkit.training.mixture import image_markup

    folder = Path(__file__).parents[1] / "assets" / "chat_templates"
    source = (folder / f"{template}.jinja").read_text() if "{" not in template else template
    assert image_markup(ChatTemplate(source=source, special_tokens={"bos_token": "<s>"}), placeholder) == markup
