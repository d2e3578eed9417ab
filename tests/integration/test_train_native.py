"""`vlmkit train finetune` on the native-resolution families (Pixtral as LLaVA, Mistral 3, Qwen2-VL)
with images of different sizes packed into one vision sequence, on folders made by `vlmkit create`:
a batch's loss is the sum of its examples' losses, loss falls, freezing and LoRA train what they
say, and token-budget batches (`--data.max_tokens_per_batch`) resume exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.integration.test_train_families import conversation, losses
from vlmkit.cli import main
from vlmkit.data.chat_template import load_chat_template
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.models.registry import family_of
from vlmkit.training.chat import ChatCollator, ChatJsonlDataset, as_conversation
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.cli import run_train
from vlmkit.training.trainer import SuffixLMLoss
from vlmkit.weights.hf import load_hf

# family -> (vlmkit create arguments, the parts the default finetune recipe trains (tower frozen)).
FAMILIES = {
    "pixtral": (["--family", "llava", "--preset", "pixtral-debug"], {"projector", "language_model"}),
    "mistral3": (["--family", "mistral3", "--preset", "debug"], {"merger", "projector", "language_model"}),
    "qwen2_vl": (["--family", "qwen2_vl", "--preset", "debug"], {"visual.merger", "language_model"}),
}
# (height, width) of the test images: aspect ratios from 1:2 to 2:1, so every batch mixes sizes.
SIZES = [(40, 56), (70, 30), (24, 24), (64, 48), (33, 61), (100, 60)]
# A Mistral-style chat template for the Pixtral-tower folders (`[IMG]` per image item, `[INST]` turns) that
# keeps system prompts: Mistral 3's own (bundled) renders one only before the last user turn.
MISTRAL_TEMPLATE = (
    '{{- bos_token }}{%- for m in messages %}{%- if m["role"] == "user" %}{{- "[INST]" }}{%- endif %}'
    '{%- if m["content"] is string %}{{- m["content"] }}{%- else %}{%- for c in m["content"] %}'
    '{%- if c["type"] == "image" %}{{- "[IMG]" }}{%- else %}{{- c["text"] }}{%- endif %}{%- endfor %}{%- endif %}'
    '{%- if m["role"] == "user" %}{{- "[/INST]" }}{%- elif m["role"] == "assistant" %}{{- eos_token }}{%- endif %}'
    '{%- endfor %}')


def image(k: int) -> Image.Image:
    h, w = SIZES[k % len(SIZES)]
    return Image.fromarray(np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """{family: folder} made by `vlmkit create` (read-only)."""
    root = tmp_path_factory.mktemp("native")
    for name, (args, _) in FAMILIES.items():
        assert main(["create", *args, str(root / name)]) == 0
        if name != "qwen2_vl":  # chat_template.jinja takes precedence over tokenizer_config.json's
            (root / name / "chat_template.jinja").write_text(MISTRAL_TEMPLATE)
    return {name: root / name for name in FAMILIES}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """8 chat rows (one or two images each, of the sizes above), as a manifest."""
    folder = tmp_path_factory.mktemp("rows")
    rows, k = [], 0
    for i in range(8):
        row = conversation(i)
        for name in row["images"]:
            image(k).save(folder / name)
            k += 1
        rows.append(row)
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "rows.jsonl"


def train(model: Path, data: Path, out: Path, *extra: str) -> int:
    return run_train(["finetune", "--model", str(model), "--data", str(data), "--out", str(out), "--steps", "8",
                      "--data.batch_size", "4", "--optim.lr", "3e-3", "--optim.warmup_steps", "1",
                      "--precision", "fp32", "--ckpt_every", "0", "--data.max_length", "400", *extra])


def _parts_changed(before: Path, after: Path) -> set[str]:
    """Top-level parts holding a changed tensor; Qwen2-VL's `visual` split into its tower and merger."""
    a, b = (load_hf(f, dtype="float32").state_dict() for f in (before, after))
    return {".".join(k.split(".")[:2 if k.startswith("visual.") else 1]) for k in a if not torch.equal(a[k], b[k])}


def _collated(folder: Path, n: int):
    """(the SuffixLMLoss of the folder's model, a collator, n chat samples with images of mixed sizes)."""
    model = load_hf(folder, dtype="float32")
    processor = family_of(model).build_processor(folder, Tokenizer.from_folder(folder), model.cfg)
    collate = ChatCollator(processor, load_chat_template(folder))
    samples, k = [], 0
    for i in range(n):
        messages, names = as_conversation(conversation(i))
        samples.append({"messages": messages, "images": [image(k + j) for j in range(len(names))]})
        k += len(names)
    return SuffixLMLoss(model), collate, samples


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_loss_and_grads_are_sums_of_examples(family, folders):
    """A batch of 4 conversations (6 images of 5 sizes, packed into one vision sequence) gives the
    sum of the 4 examples' summed losses, and the sum of their gradients."""
    loss, collate, samples = _collated(folders[family], 4)
    batch = collate(samples)
    grids = batch.get("image_grid_thw", batch.get("image_sizes"))
    assert len({tuple(g) for g in grids.tolist()}) >= 3  # the images really differ in size
    params = [p for p in loss.parameters() if p.requires_grad]
    whole = loss(**batch)
    grads = torch.autograd.grad(whole, params)
    parts = [loss(**collate([s])) for s in samples]
    part_grads = [torch.autograd.grad(p, params) for p in parts]
    torch.testing.assert_close(whole, sum(parts), rtol=1e-5, atol=1e-4)
    for g, gs in zip(grads, zip(*part_grads)):
        torch.testing.assert_close(g, sum(gs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_loss_falls_with_the_tower_frozen(family, folders, rows, tmp_path):
    """The recipe's default freezes the vision tower: loss falls, the tower is bit-identical, the
    connector (Qwen2-VL's merger inside `visual`) and the decoder train; the export loads."""
    out = tmp_path / "run"
    assert train(folders[family], rows, out) == 0
    curve = losses(out)
    assert len(curve) == 8 and curve[-1] < curve[0] - 0.5
    assert _parts_changed(folders[family], out / "export") == FAMILIES[family][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_unfrozen_tower_trains_alone(family, folders, rows, tmp_path):
    out = tmp_path / "run"
    assert train(folders[family], rows, out, "--steps", "2", "--freeze.vision_tower", "false",
                 "--freeze.projector", "true", "--freeze.language_model", "true") == 0
    tower = {"qwen2_vl": {"visual.patch_embed", "visual.blocks"}}.get(family, {"vision_tower"})
    assert _parts_changed(folders[family], out / "export") == tower


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_only_decoder_adapters(family, folders, rows, tmp_path):
    out = tmp_path / "run"
    assert train(folders[family], rows, out, "--steps", "3", "--lora.enabled", "--optim.lr", "1e-2") == 0
    before, after = (load_hf(f, dtype="float32").state_dict() for f in (folders[family], out / "export"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("language_model.layers.") and k.endswith("_proj.weight") for k in changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_token_budget_batches_resume_exactly(family, folders, rows, tmp_path):
    """Batches filled up to a budget of 1-2 examples (their counts vary); killed after 3 steps and
    resumed, the run has the uninterrupted one's losses, batch sizes and weights."""
    budget = {"mistral3": "120"}.get(family, "160")  # Mistral 3's merge gives 4x fewer image tokens
    extra = ("--steps", "6", "--data.max_tokens_per_batch", budget, "--lora.enabled", "--lora.dropout", "0.2",
             "--optim.lr", "1e-2", "--export", "false")
    assert train(folders[family], rows, tmp_path / "full", *extra) == 0
    assert train(folders[family], rows, tmp_path / "split", *extra, "--stop_after", "3") == 0
    assert train(folders[family], rows, tmp_path / "split", *extra, "--resume") == 0
    logged = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("full", "split")]
    counts = [[m["samples"] for m in run if "samples" in m] for run in logged]
    assert counts[0] == counts[1] and len(counts[0]) == 6 and len(set(counts[0])) > 1
    assert losses(tmp_path / "split") == losses(tmp_path / "full")
    wa, wb = (load_file(str(latest_checkpoint(tmp_path / r / "checkpoints") / "model.safetensors"))
              for r in ("full", "split"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_row_over_the_token_budget(folders, rows, tmp_path, capsys):
    """A row longer than the budget: one line naming it (file:line, its token count), exit 2; with
    bad_rows skip it is left out and counted."""
    rc = train(folders["qwen2_vl"], rows, tmp_path / "out", "--data.max_tokens_per_batch", "70")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("vlmkit: error: ") and "\n" not in err
    match = re.search(r"rows\.jsonl:(\d+) has (\d+) tokens, more than data\.max_tokens_per_batch=70", err)
    assert match, err
    line, n = map(int, match.groups())
    _, collate, _ = _collated(folders["qwen2_vl"], 0)
    dataset = ChatJsonlDataset(rows, collator=collate)
    assert [collate.length(dataset[i]) for i in range(line)][-1] == n > 70
    assert all(collate.length(dataset[i]) <= 70 for i in range(line - 1))  # the first such row is named
    assert train(folders["qwen2_vl"], rows, tmp_path / "skip", "--steps", "2", "--data.max_tokens_per_batch", "70",
                 "--data.bad_rows", "skip") == 0
    assert "over_budget=" in capsys.readouterr().out


def _part(key: str):
    return lambda t: {"type": "text", key: t}


# family -> (conversations, what the last one renders to).
CREATED_CHATS = {
    # transformers' Mistral 3 converter: the system prompt opens the last user turn.
    "mistral3": ([[{"role": "user", "content": [{"type": "image"}, _part("text")("what is it")]}],
                          [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [_part("text")("a"), {"type": "image"}]},
                           {"role": "assistant", "content": [_part("text")("b")]}, {"role": "user", "content": "c"}]],
                 "<bos>[INST]a[IMG][/INST]b<eos>[INST]Be brief.\n\nc[/INST]"),
    # mistral-community/pixtral-12b: text parts under "content", string assistant turns.
    "pixtral": ([[{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": [_part("content")("a"), {"type": "image"}]},
                             {"role": "assistant", "content": "b"},
                             {"role": "user", "content": [{"type": "image"}, _part("content")("c")]}]],
                "<bos>[INST]a[IMG][/INST]b<eos>[INST]Be brief.\n\n[IMG]c[/INST]"),
}


@pytest.mark.parametrize("family", CREATED_CHATS)
def test_created_folder_chats_like_transformers(family, tmp_path):
    """`vlmkit create` writes the family's published chat template (Mistral 3: transformers' converter's;
    Pixtral: pixtral-12b's); vlmkit and transformers' tokenizer render the folder's template alike."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / family
    assert main(["create", *FAMILIES[family][0], str(folder)]) == 0
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = load_chat_template(folder)
    conversations, last = CREATED_CHATS[family]
    for messages in conversations:
        expected = theirs.apply_chat_template(messages, tokenize=False)
        assert ours.render(messages) == expected and "[IMG]" in expected
    assert expected == last


def test_row_with_an_image_smaller_than_a_patch(folders, rows, tmp_path, capsys):
    """The processor's refusal names the manifest row (exit 2), or the row is skipped."""
    data = tmp_path / "data"
    data.mkdir()
    lines = rows.read_text().splitlines()
    for name in {n for line in lines for n in json.loads(line)["images"]}:
        (data / name).write_bytes((rows.parent / name).read_bytes())
    Image.fromarray(np.zeros((5, 60, 3), np.uint8)).save(data / "strip.png")
    bad = {"images": ["strip.png"], "messages": [{"role": "user", "content": [{"type": "image"}]},
                                                 {"role": "assistant", "content": "yes"}]}
    (data / "rows.jsonl").write_text("\n".join([lines[0], json.dumps(bad), *lines[1:]]) + "\n")
    rc = train(folders["qwen2_vl"], data / "rows.jsonl", tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "rows.jsonl:2 cannot be processed: an image (5 x 60 pixels) is smaller than one 14 x 14 patch" in err
    assert train(folders["qwen2_vl"], data / "rows.jsonl", tmp_path / "skip", "--steps", "1",
                 "--data.bad_rows", "skip") == 0
    assert "unprocessable=1" in capsys.readouterr().out



@pytest.mark.parametrize("family", CREATED_CHATS)
def test_chat_turns_keep_their_text_in_every_created_template(family, tmp_path):
    """`--chat` / server text parts carry "text" and "content" (`text_part`), so Pixtral's template, which
    reads only "content", keeps the user's words; both templates render them as transformers does."""
    transformers = pytest.importorskip("transformers")
    from vlmkit.data.conversation import chat_turns, parse_messages

    folder = tmp_path / family
    assert main(["create", *FAMILIES[family][0], str(folder)]) == 0
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = load_chat_template(folder)
    turns = chat_turns(["what is it"], 1)  # pixtral-12b's template takes only string assistant turns
    parsed, _ = parse_messages([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}])
    for messages, words in ((turns, ("what is it",)), (parsed, ("hi",))):
        text = ours.render(messages, add_generation_prompt=True)
        assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert all(w in text for w in words), text
