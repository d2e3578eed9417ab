"""The user-facing path for every `vlm` family, on folders made by `vlmkit create`: PaliGemma and
LLaVA (random debug weights, so the text is noise; the token ids are what is compared).

create -> transformers loads the folder strictly with equal logits; transformers' processor gives
our batch; `vlmkit generate` with --prompt, --chat and --messages in-process; greedy tokens through
the pipeline equal transformers' generate on a left-padded batch of 2 prompts with different image
counts; bad inputs are one line and exit 2.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.cli import build_parser, main
from vlmkit.data.processor_files import bundled_chat_template
from vlmkit.generation import SamplingConfig
from vlmkit.pipeline import load

tf = pytest.importorskip("transformers")

LLAVA_PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"
NEW = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{family: folder} made by `vlmkit create` through the CLI, in-process."""
    root = tmp_path_factory.mktemp("families")
    assert main(["create", str(root / "paligemma")]) == 0
    assert main(["create", "--family", "llava", "--preset", "debug", str(root / "llava")]) == 0
    return {"paligemma": root / "paligemma", "llava": root / "llava"}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Two PNGs of different sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(40, 56), (70, 30)]):
        rgb = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / f"img{i}.png")
        paths.append(str(root / f"img{i}.png"))
    return paths


@pytest.fixture(scope="module")
def llava_pair(folders):
    """(our pipeline, transformers' model, transformers' processor) on the created LLaVA folder."""
    folder = folders["llava"]
    hf, info = tf.LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.generation_config.pad_token_id = hf.config.text_config.pad_token_id
    return load(folder, dtype="float32"), hf.eval(), tf.AutoProcessor.from_pretrained(folder)


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def test_llava_folder_is_complete(folders):
    folder = folders["llava"]
    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    image_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<image>")
    assert config["image_token_index"] == image_id
    proc = json.loads((folder / "processor_config.json").read_text())
    assert proc == {"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": 8,
                    "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}
    template = bundled_chat_template("llava-1.5")
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == template
    assert (folder / "chat_template.jinja").read_text() == template


def test_transformers_batch_and_logits_equal(llava_pair, image_files):
    """transformers' processor on the folder gives our batch (left-padded, 1 and 2 images), and
    its model our logits at every real token."""
    pipe, hf, hf_proc = llava_pair
    prompts = [LLAVA_PROMPT, "USER: <image> and <image>: compare ASSISTANT:"]
    images = [Image.open(p) for p in image_files]
    theirs = hf_proc(text=prompts, images=[images[0], *images], padding="longest", padding_side="left",
                     return_tensors="pt")
    ours = pipe.processor(prompts, [[images[0]], images], padding_side="left")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["attention_mask"][1].all() and not ours["attention_mask"][0].all()  # row 0 is padded
    with torch.no_grad():
        ref = hf(**theirs).logits
        got = pipe.model(ours["input_ids"], ours["pixel_values"], ours["attention_mask"])
    valid = ours["attention_mask"].bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_llava_greedy_equals_transformers(llava_pair, image_files):
    pipe, hf, hf_proc = llava_pair
    prompts = ["USER: <image> <image> Two? ASSISTANT:", LLAVA_PROMPT]
    images = [Image.open(p) for p in image_files]
    batch = hf_proc(text=prompts, images=[*images, images[1]], padding="longest", padding_side="left",
                    return_tensors="pt")
    ours = pipe.processor(prompts, [images, [images[1]]], padding_side="left")
    _assert_greedy_equal(pipe, hf, batch, ours, hf.config.text_config.eos_token_id)
    got = pipe.generate_batch(prompts, [images, [images[1]]], SamplingConfig(max_new_tokens=NEW))
    assert len(set(got[0].token_ids)) > 1  # not a degenerate repeat
    assert got[1].token_ids == pipe.generate(LLAVA_PROMPT, [images[1]], SamplingConfig(max_new_tokens=NEW)).token_ids


def test_llava_chat_equals_transformers(llava_pair, image_files):
    """A 3-turn chat: transformers' apply_chat_template (images named in the messages) gives the
    same ids, and greedy tokens are equal."""
    pipe, hf, hf_proc = llava_pair
    messages = [{"role": "user", "content": [{"type": "image", "path": image_files[0]}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                {"role": "user", "content": [{"type": "text", "text": "Sure?"}]}]
    theirs = hf_proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")
    ours = pipe.processor.chat(pipe.chat_template, messages, [Image.open(image_files[0])])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    with torch.no_grad():
        ref = hf.generate(**theirs, max_new_tokens=NEW, do_sample=False)[0, theirs["input_ids"].shape[1]:]
    got = pipe.chat(messages, [image_files[0]], SamplingConfig(max_new_tokens=NEW))
    assert got.token_ids == _until_eos(ref.tolist(), hf.config.text_config.eos_token_id)


def _assert_greedy_equal(pipe, hf, hf_batch, our_batch, eos: int) -> None:
    """Greedy tokens and every step's raw logits of our pipeline equal transformers' generate (the
    logits matter: a random debug model may repeat one token)."""
    with torch.no_grad():
        ref = hf.generate(**hf_batch, max_new_tokens=NEW, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)
    got = pipe.run(our_batch, SamplingConfig(max_new_tokens=NEW), output_logits=True)
    tokens = ref.sequences[:, hf_batch["input_ids"].shape[1]:].tolist()
    assert [r.token_ids for r in got] == [_until_eos(row, eos) for row in tokens]
    ref_logits = torch.stack(ref.logits, 1)  # [B, steps, V]
    for b, r in enumerate(got):
        torch.testing.assert_close(r.logits, ref_logits[b, : len(r.logits)], atol=1e-5, rtol=1e-5)


def test_paligemma_greedy_equals_transformers(folders, image_files):
    """PaliGemma through the same pipeline, unchanged: a left-padded batch of 2 with 1 and 2 images."""
    pipe = load(folders["paligemma"], dtype="float32")
    hf = tf.PaliGemmaForConditionalGeneration.from_pretrained(folders["paligemma"]).eval()
    hf.generation_config.pad_token_id = pipe.tokenizer.pad_id
    prompts, groups = ["caption en", "answer en how many shapes are there ?"], [image_files[:1], image_files]
    batch = pipe.processor(prompts, groups, padding_side="left")
    assert not batch["attention_mask"][0].all()  # row 0 is padded
    _assert_greedy_equal(pipe, hf, batch, batch, pipe.tokenizer.eos_id)


def test_llava_features_cached_per_image(llava_pair, image_files, monkeypatch):
    pipe, _, _ = llava_pair
    calls = []
    original = pipe.model.encode_images
    monkeypatch.setattr(pipe.model, "encode_images", lambda px: calls.append(px.shape[0]) or original(px))
    pipe._features.clear()
    first = pipe.generate(LLAVA_PROMPT, [image_files[0]], SamplingConfig(max_new_tokens=3))
    again = pipe.generate(LLAVA_PROMPT, [image_files[0]], SamplingConfig(max_new_tokens=3))
    assert calls == [1] and first.token_ids == again.token_ids


@pytest.mark.parametrize("family,argv", [
    ("llava", ["--prompt", LLAVA_PROMPT]),
    ("llava", ["--chat", "What is this?"]),
    ("llava", ["--chat", "What is this?", "--chat", "A cat.", "--chat", "Sure?"]),
    ("paligemma", ["--prompt", "caption en"]),
    ("paligemma", ["--task", "caption"]),
])
def test_cli_generate(folders, image_files, capsys, family, argv):
    rc, out, err = _run(["generate", "--model", str(folders[family]), "--image", image_files[0],
                         "--max-new-tokens", "4", "--json", *argv], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["num_images"] == 1 and 1 <= len(d["token_ids"]) <= 4
    if "--chat" in argv:
        assert d["task"] == "chat" and d["prompt"].startswith("USER: <image>\nWhat is this? ")
        assert d["prompt"].endswith("ASSISTANT:")


def test_cli_chat_tokens_equal_prompt_tokens(folders, image_files, capsys):
    """--chat "q" is the template's prompt: the same tokens as --prompt with the rendered text."""
    base = ["generate", "--model", str(folders["llava"]), "--image", image_files[0], "--max-new-tokens", "5", "--json"]
    chat = json.loads(_run([*base, "--chat", "What is this?"], capsys)[1])
    raw = json.loads(_run([*base, "--prompt", chat["prompt"]], capsys)[1])
    assert chat["prompt"] == "USER: <image>\nWhat is this? ASSISTANT:"
    assert chat["token_ids"] == raw["token_ids"]


def test_cli_messages_file(folders, image_files, tmp_path, capsys):
    """OpenAI image_url parts naming files, a request body with "messages", and --image filling bare parts."""
    named = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_files[1]}}, {"type": "text", "text": "What is this?"}]}]}
    bare = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    (tmp_path / "named.json").write_text(json.dumps(named))
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    base = ["generate", "--model", str(folders["llava"]), "--max-new-tokens", "5", "--json"]
    a = json.loads(_run([*base, "--messages", str(tmp_path / "named.json")], capsys)[1])
    b = json.loads(_run([*base, "--messages", str(tmp_path / "bare.json"), "--image", image_files[1]], capsys)[1])
    c = json.loads(_run([*base, "--chat", "What is this?", "--image", image_files[1]], capsys)[1])
    assert a["prompt"] == b["prompt"] == c["prompt"]
    assert a["token_ids"] == b["token_ids"] == c["token_ids"]


BAD_MESSAGES = {
    "not_json": "[{",
    "not_list": json.dumps({"role": "user"}),
    "bad_role": json.dumps([{"role": "robot", "content": "hi"}]),
    "bad_part": json.dumps([{"role": "user", "content": [{"type": "audio"}]}]),
    "url": json.dumps([{"role": "user", "content": [{"type": "image", "url": "https://x.org/a.png"}]}]),
}


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "USER: <image> <image> two? ASSISTANT:"], "holds 2 <image> placeholder(s) but got 1 image"),
    (["--prompt", "USER: no placeholder ASSISTANT:"], "holds 0 <image> placeholder(s) but got 1 image"),
    (["--task", "caption"], "--task caption builds a PaliGemma (PaLI) prompt"),
    (["--chat", "a", "--chat", "b"], "give an odd number"),
    (["--chat", "a", "--prompt", "b"], "replace --prompt"),
    (["--chat", "a", "--draw", "x.png"], "a chat has none"),
    (["--messages", "@not_json"], "cannot read messages file"),
    (["--messages", "@not_list"], "expected a non-empty list of messages"),
    (["--messages", "@bad_role"], "message 0 must be an object with a role"),
    (["--messages", "@bad_part"], "type text, image or image_url"),
    (["--messages", "@url"], "vlmkit reads images offline"),
])
def test_cli_bad_inputs(folders, image_files, tmp_path, capsys, argv, message):
    argv = list(argv)
    for i, a in enumerate(argv):
        if a.startswith("@"):
            (tmp_path / f"{a[1:]}.json").write_text(BAD_MESSAGES[a[1:]])
            argv[i] = str(tmp_path / f"{a[1:]}.json")
    rc, out, err = _run(["generate", "--model", str(folders["llava"]), "--image", image_files[0], *argv], capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("vlmkit: error: ") and message in err, err


def test_cli_two_images_one_placeholder(folders, image_files, capsys):
    rc, _, err = _run(["generate", "--model", str(folders["llava"]), "--image", image_files[0], "--image",
                       image_files[1], "--prompt", LLAVA_PROMPT], capsys)
    assert rc == 2 and err == "vlmkit: error: prompt 0 holds 1 <image> placeholder(s) but got 2 image(s)\n"


def test_cli_paligemma_chat_is_one_line(folders, image_files, capsys):
    rc, out, err = _run(["generate", "--model", str(folders["paligemma"]), "--image", image_files[0],
                         "--chat", "What is this?"], capsys)
    assert rc == 2 and out == ""
    assert err == "vlmkit: error: paligemma models have no chat template; give the prompt itself (--prompt)\n"


def test_cli_failing_template_is_one_line(folders, image_files, tmp_path, capsys):
    folder = tmp_path / "llava"
    shutil.copytree(folders["llava"], folder)
    (folder / "chat_template.jinja").write_text("{{ raise_exception('only one turn, please') }}")
    rc, _, err = _run(["generate", "--model", str(folder), "--image", image_files[0], "--chat", "q"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and "failed to render: only one turn, please" in err, err


def test_generate_help_lists_chat_flags():
    text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert "--chat" in text and "--messages" in text
