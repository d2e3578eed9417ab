"""`vlmkit train finetune` on a chat family (LLaVA, through the registry): loss on assistant tokens
only (equal to transformers' assistant mask), loss goes down, freezing per part, LoRA, exact
kill/resume, an export that vlmkit and transformers load, and one-line errors for bad input.

The LLaVA folder is made by transformers (`save_pretrained` of a tiny random LlavaForConditionalGeneration
and of a LlavaProcessor with LLaVA-1.5's chat template, over a small BPE tokenizer), like a
llava-hf checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.models import registry
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.weights.hf import load_hf

transformers = pytest.importorskip("transformers")

TEMPLATES = Path(__file__).parents[1] / "assets" / "chat_templates"
WORDS = ["a red circle", "a blue square", "a green triangle on the left", "what shape is this", "which colour",
         "where is it", "describe the picture", "two shapes", "on the right", "yes", "no"]


# LLaVA-NeXT's tile grids for 32-px tiles: 1 x 2, 2 x 1, 2 x 2.
PINPOINTS = [[32, 64], [64, 32], [64, 64]]


def _processor_and_config(family: str, hf_tok, template: str):
    """(transformers processor, model class, config kwargs) of `family` ("llava" or "llava_next")."""
    sizes = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    kwargs = dict(patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                  chat_template=(TEMPLATES / f"{template}.jinja").read_text())
    if family == "llava":
        processor = transformers.LlavaProcessor(image_processor=transformers.CLIPImageProcessorPil(**sizes),
                                                tokenizer=hf_tok, **kwargs)
        return processor, transformers.LlavaForConditionalGeneration, transformers.LlavaConfig, {}
    image_processor = transformers.LlavaNextImageProcessorPil(**sizes, image_grid_pinpoints=PINPOINTS)
    processor = transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=hf_tok, **kwargs)
    return (processor, transformers.LlavaNextForConditionalGeneration, transformers.LlavaNextConfig,
            {"image_grid_pinpoints": PINPOINTS})


def hf_tokenizer(out: Path, special_tokens=()):
    """A small BPE (the test words, `<image>`, BOS added by the post-processor, `special_tokens`) as
    a Llama-class tokenizer that transformers loaded, like a llava-hf checkpoint's."""
    from tokenizers import Tokenizer, processors

    from vlmkit.data.tokenizer_train import train_paligemma_tokenizer

    raw = train_paligemma_tokenizer(out / "raw_tokenizer", WORDS + ["USER ASSISTANT User Assistant system"], 320)
    tok = Tokenizer.from_file(str(raw / "tokenizer.json"))
    tok.add_special_tokens(list(special_tokens))
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", bos)])
    tok.save(str(raw / "tokenizer.json"))
    (raw / "tokenizer.model").unlink(missing_ok=True)
    # A fresh config: the trained one's added_tokens_decoder would hide the tokens added above.
    config = dict(tokenizer_class="LlamaTokenizer", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                  unk_token="<unk>")
    (raw / "tokenizer_config.json").write_text(json.dumps(config))
    return transformers.AutoTokenizer.from_pretrained(str(raw))


def text_config(hf_tok):
    return transformers.LlamaConfig(vocab_size=len(hf_tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=hf_tok.pad_token_id,
                                    bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id)


def make_llava_folder(out: Path, template: str = "llava-1.5", family: str = "llava") -> Path:
    """A tiny random LLaVA or LLaVA-NeXT (CLIP 32 px / 8 px patches -> 16 image tokens per tile,
    2-layer Llama) saved by transformers."""
    hf_tok = hf_tokenizer(out)
    processor, model_class, config_class, extra = _processor_and_config(family, hf_tok, template)
    folder = out / family
    processor.save_pretrained(str(folder))
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    cfg = config_class(vision_config=vision.to_dict(), text_config=text_config(hf_tok).to_dict(),
                       image_token_index=hf_tok.convert_tokens_to_ids("<image>"), **extra)
    torch.manual_seed(0)
    model_class(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> Path:
    """Read-only: copy before changing files."""
    return make_llava_folder(tmp_path_factory.mktemp("llava"))


def image(seed: int, size=(40, 50)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def conversation(i: int) -> dict:
    """Chat row i: one or two images, a system prompt on some, one or two assistant turns."""
    n_images = 1 + i % 2
    user = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": WORDS[3 + i % 4]}]
    messages = ([{"role": "system", "content": "describe the picture"}] if i % 3 == 0 else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": WORDS[i % 3]}]}]
    if i % 2:
        messages += [{"role": "user", "content": "where is it"},
                     {"role": "assistant", "content": WORDS[8 + i % 2]}]
    return {"images": [f"img{i}_{k}.png" for k in range(n_images)], "messages": messages}


def write_rows(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        paths = row.get("images") or ([row["image"]] if "image" in row else [])
        for k, name in enumerate(paths):
            image(hash(name) % 1000 + k).save(folder / name)
    manifest = folder / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture
def chat_rows(tmp_path) -> Path:
    """8 rows: 7 chat conversations and one PaliGemma-style prefix/suffix row."""
    rows = [conversation(i) for i in range(7)]
    rows.append({"image": "pfx.png", "prefix": "which colour", "suffix": "a blue square"})
    return write_rows(tmp_path / "data", rows)


def train(model: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "10",
            "--data.batch_size", "4", "--optim.lr", "3e-3", "--optim.warmup_steps", "1", "--precision", "fp32",
            "--ckpt_every", "0", "--data.max_length", "200", *extra]
    return run_train(args)


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# ---- labels ---------------------------------------------------------------------------------------


def _collator(folder: Path):
    from vlmkit.data.chat_template import load_chat_template
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.training.chat import ChatCollator

    cfg = load_hf(folder).cfg
    processor = registry.get_family("llava").build_processor(folder, Tokenizer.from_folder(folder), cfg)
    return ChatCollator(processor, load_chat_template(folder))


def _with_images(messages: list[dict], images: list) -> list[dict]:
    """transformers' form: each image item carries its image."""
    it = iter(images)
    return [{**m, "content": [dict(c, image=next(it)) if c["type"] == "image" else c for c in m["content"]]}
            for m in messages]


def test_labels_are_transformers_assistant_mask(llava_folder):
    """Labels (!= -100) equal transformers' `return_assistant_tokens_mask` on LLaVA-1.5's template
    ({% generation %} blocks), and input_ids / pixel_values equal its processor's."""
    from vlmkit.training.chat import as_conversation, render_conversation

    theirs = transformers.AutoProcessor.from_pretrained(str(llava_folder))
    collate = _collator(llava_folder)
    for i in range(4):
        messages, names = as_conversation(conversation(i))
        messages = render_conversation(collate.template, messages)[0]  # string contents as text items
        images = [image(k + 10 * i) for k in range(len(names))]
        ours = collate([{"messages": messages, "images": images}])
        expected = theirs.apply_chat_template(_with_images(messages, images), tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True, return_tensors="pt")
        assert torch.equal(ours["input_ids"], expected["input_ids"])
        assert torch.equal(ours["pixel_values"], expected["pixel_values"])
        mask = torch.as_tensor(expected["assistant_masks"]).bool()
        assert mask.any() and torch.equal(ours["labels"] != -100, mask)
        assert torch.equal(ours["labels"][mask], ours["input_ids"][mask])


def test_batch_is_right_padded_rows(llava_folder):
    """A batch of several conversations holds each one's own ids and labels, padding never trained."""
    from vlmkit.training.chat import as_conversation

    collate = _collator(llava_folder)
    samples = []
    for i in (0, 1, 2):
        messages, names = as_conversation(conversation(i))
        samples.append({"messages": messages, "images": [image(k) for k in range(len(names))]})
    batch = collate(samples)
    for b, sample in enumerate(samples):
        alone = collate([sample])
        n = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][b, :n], alone["input_ids"][0])
        assert torch.equal(batch["labels"][b, :n], alone["labels"][0])
        assert (batch["attention_mask"][b, n:] == 0).all() and (batch["labels"][b, n:] == -100).all()
    assert batch["pixel_values"].shape[0] == 1 + 2 + 1  # every image of the batch, in order


# ---- training ---------------------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """vlmkit's state dict of a folder (transformers' and vlmkit's layouts read to the same names)."""
    return load_hf(folder, dtype="float32").state_dict()


def _parts_changed(before: dict, after: dict) -> set[str]:
    """Top-level parts (vision_tower, projector, language_model) holding a changed tensor."""
    assert before.keys() == after.keys()
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


def test_finetune_llava_loss_falls_and_export_loads(llava_folder, chat_rows, tmp_path):
    out = tmp_path / "run"
    assert train(llava_folder, chat_rows, out) == 0
    curve = losses(out)
    assert len(curve) == 10 and curve[-1] < curve[0] - 0.5
    export = out / "export"
    # The recipe's default freezes the vision tower: it must come out bit-identical.
    assert _parts_changed(_weights(llava_folder), _weights(export)) == {"projector", "language_model"}
    ours = load_hf(export, dtype="float32")
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(str(export)).eval()
    batch = _collator(export)([{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                            "text": "what shape"}]}],
                                "images": [image(3)]}])
    with torch.no_grad():
        expected = theirs(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        got = ours(batch["input_ids"], batch["pixel_values"])
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("flags,trained", [
    (("--freeze.vision_tower", "true", "--freeze.language_model", "true"), {"projector"}),
    (("--freeze.vision_tower", "false", "--freeze.projector", "true"), {"vision_tower", "language_model"}),
    (("--freeze.parts", "vision_tower,language_model"), {"projector"}),  # the model's own part names
])
def test_freezing_per_part(llava_folder, chat_rows, tmp_path, flags, trained):
    out = tmp_path / "run"
    assert train(llava_folder, chat_rows, out, "--steps", "3", *flags) == 0
    assert _parts_changed(_weights(llava_folder), _weights(out / "export")) == trained


def test_lora_trains_only_adapters(llava_folder, chat_rows, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "run"
    assert train(llava_folder, chat_rows, out, "--steps", "3", "--lora.enabled", "--optim.lr", "1e-2") == 0
    with safe_open(str(out / "lora_adapters.safetensors"), framework="pt") as f:
        keys = sorted(f.keys())
    assert keys and all(k.startswith("language_model.layers.") and k.endswith((".lora_A", ".lora_B")) for k in keys)
    before, after = _weights(llava_folder), _weights(out / "export")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Merged adapters change exactly the decoder's attention / MLP projections, nothing else.
    assert changed and all(k.startswith("language_model.") and k.endswith("_proj.weight") for k in changed)
    assert len(changed) == len(keys) // 2


def test_kill_and_resume_is_identical(llava_folder, chat_rows, tmp_path):
    extra = ("--steps", "6", "--lora.enabled", "--lora.dropout", "0.2", "--optim.lr", "1e-2", "--export", "false")
    assert train(llava_folder, chat_rows, tmp_path / "full", *extra) == 0
    assert train(llava_folder, chat_rows, tmp_path / "split", *extra, "--stop_after", "3") == 0
    assert train(llava_folder, chat_rows, tmp_path / "split", *extra, "--resume") == 0
    assert losses(tmp_path / "split") == losses(tmp_path / "full") and len(losses(tmp_path / "full")) == 6
    wa, wb = (load_file(str(latest_checkpoint(tmp_path / r / "checkpoints") / "model.safetensors"))
              for r in ("full", "split"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finetune_llava_next_through_the_same_code(tmp_path, chat_rows):
    """A second family (anyres tiles, image_sizes, image_newline) trains with no code of its own."""
    folder = make_llava_folder(tmp_path / "next", template="llava-v1.6-mistral", family="llava_next")
    out = tmp_path / "run"
    assert train(folder, chat_rows, out, "--steps", "6", "--eval-data", str(chat_rows), "--eval_every", "3",
                 "--eval_batches", "1", "--data.max_length", "1000") == 0
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert "eval_loss" in (out / "metrics.jsonl").read_text()
    assert _parts_changed(_weights(folder), _weights(out / "export")) == {"projector", "image_newline",
                                                                         "language_model"}
    transformers.LlavaNextForConditionalGeneration.from_pretrained(str(out / "export"))


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 4) for c in range(1, 4)]


def make_idefics3_folder(out: Path) -> Path:
    """A tiny random Idefics3 (SigLIP 32 px / 8 px patches, pixel shuffle 2 -> 4 tokens per frame,
    up to 3 x 3 tiles + the global image) with SmolVLM's chat template, saved by transformers."""
    hf_tok = hf_tokenizer(out, IDEFICS3_TOKENS)
    image_processor = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 96},
                                                             max_image_size={"longest_edge": 32})
    processor = transformers.Idefics3Processor(image_processor=image_processor, tokenizer=hf_tok, image_seq_len=4,
                                               chat_template=(TEMPLATES / "smolvlm.jinja").read_text())
    folder = out / "idefics3"
    processor.save_pretrained(str(folder))
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    cfg = transformers.Idefics3Config(vision_config=vision, text_config=text_config(hf_tok).to_dict(), scale_factor=2,
                                      image_token_id=hf_tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    transformers.Idefics3ForConditionalGeneration(cfg).save_pretrained(str(folder))
    return folder


def test_finetune_idefics3(tmp_path, chat_rows):
    """SmolVLM / Idefics3 (tiles, pixel_attention_mask, a template without generation blocks)
    trains with no code of its own: only its registry record."""
    folder = make_idefics3_folder(tmp_path / "idefics3")
    out = tmp_path / "run"
    assert train(folder, chat_rows, out, "--steps", "6", "--freeze.vision_tower", "false", "--freeze.parts", "connector",
                 "--data.max_length", "2000") == 0
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert _parts_changed(_weights(folder), _weights(out / "export")) == {"vision_tower", "language_model"}
    transformers.Idefics3ForConditionalGeneration.from_pretrained(str(out / "export"))


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_folder_made_by_create_trains(family, chat_rows, tmp_path):
    """`vlmkit create --family F --preset debug DIR`, then `vlmkit train finetune --model DIR`."""
    from vlmkit.cli import main

    assert registry.get_family(family).processor_files is not None
    assert main(["create", "--family", family, "--preset", "debug", str(tmp_path / family)]) == 0
    assert train(tmp_path / family, chat_rows, tmp_path / "run", "--steps", "4") == 0
    curve = losses(tmp_path / "run")
    assert len(curve) == 4 and curve[-1] < curve[0]
    assert type(load_hf(tmp_path / "run" / "export")) is registry.get_family(family).model_class


# ---- bad input ----------------------------------------------------------------------------------------


def _one_line_error(capsys, rc: int, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vlmkit: error: ") and "\n" not in err and "Traceback" not in err
    assert match in err, err


def test_chat_row_without_assistant_turn(llava_folder, tmp_path, capsys):
    row = {"images": ["a.png"], "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                        "text": "hi"}]}]}
    data = write_rows(tmp_path / "data", [conversation(0), row])
    _one_line_error(capsys, train(llava_folder, data, tmp_path / "out"), "rows.jsonl:2 has no assistant turn")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_more_images_than_placeholders(llava_folder, tmp_path, capsys):
    row = conversation(0)
    row["images"].append("extra.png")
    data = write_rows(tmp_path / "data", [conversation(1), row])
    _one_line_error(capsys, train(llava_folder, data, tmp_path / "out"),
                    'rows.jsonl:2 has 2 image(s) but its messages hold 1 {"type": "image"} item(s)')


def test_freezing_a_part_the_model_lacks(llava_folder, chat_rows, tmp_path, capsys):
    _one_line_error(capsys, train(llava_folder, chat_rows, tmp_path / "out", "--freeze.parts", "connector"),
                    "freeze.parts: the model has no part 'connector' (its parts: language_model, projector, vision_tower)")


def test_family_without_a_processor(llava_folder, chat_rows, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry._FAMILIES, "llava", replace(registry.get_family("llava"), processor=None))
    _one_line_error(capsys, train(llava_folder, chat_rows, tmp_path / "out"),
                    "vlmkit has no processor for llava models")
