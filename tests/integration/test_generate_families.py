"""The user-facing path for every `vlm` family, on folders made by `vlmkit create`: PaliGemma,
LLaVA, LLaVA-NeXT, Idefics3 / SmolVLM (model_type idefics3 and smolvlm), InternVL and DeepSeek-VL
(plain and hybrid) and Qwen2-VL (random debug weights, so the text is noise; the token ids are what is compared).

create -> transformers loads the folder strictly with equal logits; transformers' processor (its
PIL image processor) gives our batch; `vlmkit generate` with --prompt, --chat and --messages
in-process gives transformers' greedy tokens; greedy tokens through the pipeline equal
transformers' generate on a left-padded batch of 2 prompts with different image counts; bad inputs
are one line and exit 2.
"""

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.cli import build_parser, main
from vlmkit.data.processor_files import bundled_chat_template
from vlmkit.generation import SamplingConfig
from vlmkit.models.registry import get_family
from vlmkit.pipeline import load

tf = pytest.importorskip("transformers")

LLAVA_PROMPT = "USER: <image>\nWhat is this? ASSISTANT:"
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
NEW = 8
DEEPSEEK_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                   "that the user provides, and assist the user with a variety of tasks using natural language.\n\n")


@dataclass(frozen=True)
class Case:
    """A family's folder as the test makes it and the transformers classes that read it.

    name: the folder's key in `folders`; model_type: config.json's; one / two: prompts with one
    and two image placeholders; template: the bundled chat template; processor: the
    processor_config.json `vlmkit create` writes; nested: transformers' processor takes the images
    as one list per prompt; placeholder: the image token config.json's image id names; hf_only: keys
    transformers' batch adds that vlmkit derives (Qwen2-VL's mm_token_type_ids, its generate needs them)."""

    name: str
    model_type: str
    model: str
    template: str
    one: str
    two: str
    processor: str
    nested: bool = False
    placeholder: str = "<image>"
    hf_only: tuple[str, ...] = ()


CASES = {c.name: c for c in [
    Case("llava", "llava", "LlavaForConditionalGeneration", "llava-1.5", LLAVA_PROMPT,
         "USER: <image> and <image>: compare ASSISTANT:", "LlavaProcessor"),
    Case("llava_next", "llava_next", "LlavaNextForConditionalGeneration", "llava-v1.6-mistral", "[INST] <image>\nWhat is this? [/INST]",
         "[INST] <image> and <image>: compare [/INST]", "LlavaNextProcessor"),
    Case("idefics3", "idefics3", "Idefics3ForConditionalGeneration", "smolvlm",
         "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:",
         "<|im_start|>User:<image> and <image>: compare<end_of_utterance>\nAssistant:", "Idefics3Processor", nested=True),
    Case("smolvlm", "smolvlm", "SmolVLMForConditionalGeneration", "smolvlm",
         "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant:",
         "<|im_start|>User:<image> and <image>: compare<end_of_utterance>\nAssistant:", "SmolVLMProcessor",
         nested=True),
    Case("internvl", "internvl", "InternVLForConditionalGeneration", "internvl3",
         "<|im_start|>user\n<IMG_CONTEXT>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
         "<|im_start|>user\n<IMG_CONTEXT> and <IMG_CONTEXT>: compare<|im_end|>\n<|im_start|>assistant\n",
         "InternVLProcessor", placeholder="<IMG_CONTEXT>"),
    *[Case(name, name, model, "deepseek-vl", f"{DEEPSEEK_SYSTEM}User: <image_placeholder>What is this?\n\nAssistant:",
           f"{DEEPSEEK_SYSTEM}User: <image_placeholder> and <image_placeholder>: compare\n\nAssistant:", processor,
           placeholder="<image_placeholder>")
      for name, model, processor in [
          ("deepseek_vl", "DeepseekVLForConditionalGeneration", "DeepseekVLProcessor"),
          ("deepseek_vl_hybrid", "DeepseekVLHybridForConditionalGeneration", "DeepseekVLHybridProcessor")]],
    Case("qwen2_vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", "qwen2-vl",
         f"{QWEN_SYSTEM}<|im_start|>user\n{QWEN_IMAGE}What is this?<|im_end|>\n<|im_start|>assistant\n",
         f"{QWEN_SYSTEM}<|im_start|>user\n{QWEN_IMAGE} and {QWEN_IMAGE}: compare<|im_end|>\n<|im_start|>assistant\n",
         "Qwen2VLProcessor", placeholder="<|image_pad|>", hf_only=("mm_token_type_ids",)),
]}
TYPE_C = list(CASES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: folder} made by `vlmkit create` through the CLI, in-process; "smolvlm" is the Idefics3
    debug preset with SmolVLM's model_type (no published preset has it); "qwen2_vl" is its debug
    preset with an untied head (tied, the random 2-layer decoder copies its last input token, so
    greedy decoding repeats "\n" whatever the seed; tests/parity/test_qwen2_vl_family.py loads the tied one)."""
    root = tmp_path_factory.mktemp("families")
    assert main(["create", str(root / "paligemma")]) == 0
    for family in ("llava", "llava_next", "idefics3", "internvl", "deepseek_vl", "deepseek_vl_hybrid"):
        assert main(["create", "--family", family, "--preset", "debug", str(root / family)]) == 0
    presets = get_family("idefics3").presets
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(presets, "debug-smolvlm", replace(presets["debug"], hf_model_type="smolvlm", keep_first_frame=True))
        assert main(["create", "--family", "idefics3", "--preset", "debug-smolvlm", str(root / "smolvlm")]) == 0
    qwen = get_family("qwen2_vl").presets
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(qwen, "debug-untied", replace(qwen["debug"], text=replace(qwen["debug"].text, tie_embeddings=False)))
        assert main(["create", "--family", "qwen2_vl", "--preset", "debug-untied", str(root / "qwen2_vl")]) == 0
    return {name: root / name for name in ("paligemma", *TYPE_C)}


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


def _hf_processor(case: Case, folder: Path):
    """transformers' processor on `folder` with its PIL image processor. SmolVLM's, InternVL's and
    Qwen2-VL's have a video slot whose torchvision processor cannot load here: it is left empty (the class
    check skipped; a stand-in holds the frame defaults SmolVLM's chat reads) and the processor is
    built from the folder's own files."""
    if case.processor in ("LlavaProcessor", "LlavaNextProcessor", "Idefics3Processor", "DeepseekVLProcessor",
                          "DeepseekVLHybridProcessor"):
        image_processor = getattr(tf, f"{case.processor.removesuffix('Processor')}ImageProcessorPil")
        return getattr(tf, case.processor).from_pretrained(folder, image_processor=image_processor.from_pretrained(folder))
    image_processor = {"SmolVLMProcessor": tf.SmolVLMImageProcessorPil, "InternVLProcessor": tf.GotOcr2ImageProcessorPil,
                       "Qwen2VLProcessor": tf.Qwen2VLImageProcessorPil}
    cls = getattr(tf, case.processor)
    kwargs = json.loads((folder / "processor_config.json").read_text())
    assert kwargs.pop("processor_class") == case.processor
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "check_argument_for_proper_class", lambda *a: None)
        processor = cls(image_processor=image_processor[case.processor].from_pretrained(folder),
                        tokenizer=tf.AutoTokenizer.from_pretrained(folder), video_processor=None,
                        chat_template=(folder / "chat_template.jinja").read_text(), **kwargs)
    # SmolVLM's apply_chat_template reads the video processor's frame defaults even without videos.
    processor.video_processor = SimpleNamespace(num_frames=None, fps=None)
    return processor


@pytest.fixture(scope="module")
def pair(folders, request):
    """(case, our pipeline, transformers' model loaded strictly, transformers' processor) for the
    case named by the (indirect) parameter; one per case and module."""
    case, folder = CASES[request.param], folders[request.param]
    hf, info = getattr(tf, case.model).from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf.generation_config.pad_token_id = hf.config.text_config.pad_token_id
    return case, load(folder, dtype="float32"), hf.eval(), _hf_processor(case, folder)


def _hf_batch(case: Case, hf_proc, prompts, groups):
    images = [Image.open(p) if isinstance(p, str) else p for g in groups for p in g]
    if case.nested:
        it = iter(images)
        images = [[next(it) for _ in g] for g in groups]
    return hf_proc(text=prompts, images=images, padding="longest", padding_side="left", return_tensors="pt")


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@pytest.mark.parametrize("name", TYPE_C)
def test_folder_is_complete(folders, name):
    """The config's image id is the tokenizer's placeholder; processor_config.json is the family's;
    the bundled template is in tokenizer_config.json and chat_template.jinja."""
    case, folder = CASES[name], folders[name]
    config = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    image_id = next(t["id"] for t in tok["added_tokens"] if t["content"] == case.placeholder)
    assert config.get("image_token_index", config.get("image_token_id")) == image_id
    assert config["model_type"] == case.model_type
    proc = json.loads((folder / "processor_config.json").read_text())
    assert proc["processor_class"] == case.processor
    template = bundled_chat_template(case.template)
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == template
    assert (folder / "chat_template.jinja").read_text() == template


def test_llava_processor_config(folders):
    proc = json.loads((folders["llava"] / "processor_config.json").read_text())
    assert proc == {"processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": 8,
                    "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}


@pytest.mark.parametrize("pair", TYPE_C, indirect=True)
def test_transformers_batch_and_logits_equal(pair, image_files):
    """transformers' processor on the folder gives our batch (left-padded, 1 and 2 images), and
    its model our logits at every real token."""
    case, pipe, hf, hf_proc = pair
    groups = [[image_files[0]], image_files]
    theirs = _hf_batch(case, hf_proc, [case.one, case.two], groups)
    ours = pipe.processor([case.one, case.two], groups, padding_side="left")
    for key in set(theirs) - set(case.hf_only):
        assert torch.equal(ours[key], theirs[key]), key
    if "mm_token_type_ids" in case.hf_only:
        assert torch.equal(theirs["mm_token_type_ids"], (ours["input_ids"] == hf.config.image_token_id).long())
    assert ours["attention_mask"][1].all() and not ours["attention_mask"][0].all()  # row 0 is padded
    with torch.no_grad():
        ref = hf(**theirs).logits
        got = pipe.model(**{k: ours[k] for k in theirs if k not in case.hf_only})
    valid = ours["attention_mask"].bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pair", TYPE_C, indirect=True)
def test_greedy_equals_transformers(pair, image_files):
    case, pipe, hf, hf_proc = pair
    prompts, groups = [case.two, case.one], [image_files, [image_files[1]]]
    batch = _hf_batch(case, hf_proc, prompts, groups)
    ours = pipe.processor(prompts, groups, padding_side="left")
    _assert_greedy_equal(pipe, hf, batch, ours, hf.config.text_config.eos_token_id)
    got = pipe.generate_batch(prompts, groups, SamplingConfig(max_new_tokens=NEW))
    assert len(set(got[0].token_ids)) > 1  # not a degenerate repeat
    assert got[1].token_ids == pipe.generate(case.one, groups[1], SamplingConfig(max_new_tokens=NEW)).token_ids


@pytest.mark.parametrize("pair", TYPE_C, indirect=True)
def test_chat_equals_transformers(pair, image_files):
    """A 3-turn chat: transformers' apply_chat_template (images named in the messages) gives the
    same ids and pixels, and greedy tokens are equal."""
    case, pipe, hf, hf_proc = pair
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


@pytest.mark.parametrize("pair", ["llava"], indirect=True)
def test_llava_features_cached_per_image(pair, image_files, monkeypatch):
    _, pipe, _, _ = pair
    calls = []
    original = pipe.model.encode_images
    monkeypatch.setattr(pipe.model, "encode_images", lambda px: calls.append(px.shape[0]) or original(px))
    pipe._features.clear()
    first = pipe.generate(LLAVA_PROMPT, [image_files[0]], SamplingConfig(max_new_tokens=3))
    again = pipe.generate(LLAVA_PROMPT, [image_files[0]], SamplingConfig(max_new_tokens=3))
    assert calls == [1] and first.token_ids == again.token_ids


@pytest.mark.parametrize("flag", ["--prompt", "--chat"])
@pytest.mark.parametrize("pair", TYPE_C, indirect=True)
def test_cli_generate_equals_transformers(pair, folders, image_files, capsys, flag):
    """`vlmkit generate --prompt P` and `--chat "What is this?"` (whose template renders P) give
    transformers' greedy tokens on P with the image."""
    case, _, hf, hf_proc = pair
    rc, out, err = _run(["generate", "--model", str(folders[case.name]), "--image", image_files[0], "--max-new-tokens",
                         str(NEW), "--json", flag, case.one if flag == "--prompt" else "What is this?"], capsys)
    assert rc == 0, err
    d = json.loads(out)
    assert d["prompt"] == case.one and d["num_images"] == 1 and d["token_ids"]
    if flag == "--chat":
        assert d["task"] == "chat"
    batch = _hf_batch(case, hf_proc, [case.one], [[image_files[0]]])
    with torch.no_grad():
        ref = hf.generate(**batch, max_new_tokens=NEW, do_sample=False)[0, batch["input_ids"].shape[1]:]
    assert d["token_ids"] == _until_eos(ref.tolist(), hf.config.text_config.eos_token_id)


@pytest.mark.parametrize("family,argv", [
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

