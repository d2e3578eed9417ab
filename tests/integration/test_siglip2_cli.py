"""`vlmkit embed / classify / retrieve` and `vlmkit eval --task zeroshot|retrieval` on a SigLIP 2
NaFlex folder from `vlmkit create --family siglip2 --preset debug`, checked against direct calls
of the loaded model on inputs made independently by transformers (Siglip2ImageProcessorPil in its
padded layout, the folder's tokenizer through AutoTokenizer), while the CLI packs the images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image, ImageDraw
from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

import vlmkit
from vlmkit.cli import main
from vlmkit.data.processors.siglip2 import NaflexImages
from vlmkit.eval.retrieval import retrieval_recall_from_embeddings
from vlmkit.weights.hf import load_hf

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZES = [(48, 40), (20, 70), (90, 24)]  # (w, h): three aspect ratios, each its own patch grid
LABELS = list(COLOURS)
ATOL = 1e-5  # packed (CLI) vs padded (reference) encoding: another summation order, ~1e-7 apart


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip2_cli")
    (root / "images").mkdir()
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        for j, (w, h) in enumerate(SIZES[i:] + SIZES[:i]):
            image = Image.new("RGB", (w, h), (240, 240, 240))
            ImageDraw.Draw(image).ellipse([w // 6, h // 6, w - w // 6, h - h // 6], fill=rgb)
            image.save(root / "images" / f"{name}{j}.png")
            rows.append({"image": f"images/{name}{j}.png", "caption": f"A {name.upper()} circle", "label": name})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["create", "--family", "siglip2", "--preset", "debug", str(root / "s2")]) == 0
    return {"root": root, "folder": root / "s2", "rows": rows}


def _files(setup) -> list[str]:
    return sorted(str(p) for p in (setup["root"] / "images").iterdir())


def _direct(folder):
    """The loaded model and its embedding functions on transformers-made inputs."""
    model = load_hf(folder, dtype="float32")
    fields = json.loads((folder / "preprocessor_config.json").read_text())
    pil = Siglip2ImageProcessorPil(patch_size=fields["patch_size"], max_num_patches=fields["max_num_patches"])
    tok = tf.AutoTokenizer.from_pretrained(folder)
    T = model.cfg.text.max_position_embeddings

    @torch.no_grad()
    def images(paths):
        batch = pil([Image.open(p) for p in paths], return_tensors="pt")  # padded layout + mask
        return model.encode_image(batch["pixel_values"], batch["spatial_shapes"], batch["pixel_attention_mask"])

    @torch.no_grad()
    def texts(strings):  # Siglip2Tokenizer lowercases; the folder's Gemma tokenizer.json does not itself
        batch = tok([s.lower() for s in strings], padding="max_length", truncation=True, max_length=T,
                    return_tensors="pt")
        return model.encode_text(batch["input_ids"], batch["attention_mask"])

    return model, images, texts


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_folder_dispatches_to_the_naflex_processor(setup):
    tt = vlmkit.load_two_tower(str(setup["folder"]), dtype="float32")
    assert isinstance(tt.processor.images, NaflexImages)
    inputs = tt.processor.images.inputs(_files(setup)[:3])
    shapes = inputs["spatial_shapes"].tolist()
    assert set(inputs) == {"pixel_values", "spatial_shapes"} and len({tuple(s) for s in shapes}) == 3
    assert inputs["pixel_values"].shape[0] == sum(h * w for h, w in shapes)  # packed: no padding rows


def test_embed_images_and_texts_equal_the_models_embeddings(setup, tmp_path, capsys):
    folder = setup["folder"]
    _, images, texts = _direct(folder)
    code, out = _run(capsys, "embed", "--model", str(folder), "--images", str(setup["root"] / "images"),
                     "--out", str(tmp_path / "img.npy"), "--dtype", "float32", "--batch-size", "4")
    assert code == 0 and f"wrote {len(setup['rows'])} image embeddings" in out
    meta = json.loads((tmp_path / "img.json").read_text())
    got = torch.from_numpy(np.load(tmp_path / "img.npy"))
    err = (got - images(meta["inputs"])).abs().max()
    assert meta["inputs"] == _files(setup) and err <= ATOL, err
    captions = ["A Red circle", "a photo of a Blue thing.", "x " * 40]  # the last one truncated
    code, _ = _run(capsys, "embed", "--model", str(folder), *sum((["--text", c] for c in captions), []),
                   "--out", str(tmp_path / "txt.jsonl"), "--dtype", "float32")
    lines = [json.loads(ln) for ln in (tmp_path / "txt.jsonl").read_text().splitlines()]
    assert code == 0 and [ln["text"] for ln in lines] == captions
    torch.testing.assert_close(torch.tensor([ln["embedding"] for ln in lines]), texts(captions), atol=1e-6, rtol=0)


def test_classify_is_the_sigmoid_of_the_models_logits(setup, capsys):
    folder = setup["folder"]
    model, images, texts = _direct(folder)
    files = _files(setup)[:4]
    code, out = _run(capsys, "classify", "--model", str(folder), *sum((["--image", f] for f in files), []),
                     "--labels", ",".join(LABELS), "--templates", "a {} circle", "--json", "--dtype", "float32")
    assert code == 0 and model.cfg.contrastive_loss == "sigmoid"
    with torch.no_grad():
        want = model.logits(images(files), texts([f"a {n} circle" for n in LABELS])).sigmoid()  # [I, C]
    for row, probs in zip(json.loads(out), want):
        got = {r["label"]: r["probability"] for r in row["labels"]}
        torch.testing.assert_close(torch.tensor([got[n] for n in LABELS]), probs, atol=ATOL, rtol=0)


def test_retrieve_scores_are_the_models_cosines(setup, capsys):
    folder = setup["folder"]
    _, images, texts = _direct(folder)
    queries = ["a red circle", "A GREEN circle"]
    code, out = _run(capsys, "retrieve", "--model", str(folder), "--images", str(setup["root"] / "images"),
                     *sum((["--query", q] for q in queries), []), "--top-k", "9", "--json", "--dtype", "float32")
    assert code == 0
    files = _files(setup)
    scores = images(files) @ texts(queries).T  # [I, Q]
    for q, row in enumerate(json.loads(out)):
        got = {r["image"]: r["score"] for r in row["results"]}
        assert sorted(got) == sorted(files)
        torch.testing.assert_close(torch.tensor([got[f] for f in files]), scores[:, q], atol=ATOL, rtol=0)


def test_eval_zeroshot_and_retrieval_equal_direct_computation(setup, tmp_path, capsys):
    folder, rows = setup["folder"], setup["rows"]
    _, images, texts = _direct(folder)
    paths = [str(setup["root"] / r["image"]) for r in rows]
    image_embeds = images(paths)
    with torch.no_grad():
        weights = texts([f"a photo of a {n}." for n in LABELS])
    truth = torch.tensor([LABELS.index(r["label"]) for r in rows])
    code, _ = _run(capsys, "eval", "--model", str(folder), "--data", str(setup["root"] / "m.jsonl"),
                   "--task", "zeroshot", "--dtype", "float32", "--json", str(tmp_path / "zs.json"))
    summary = json.loads((tmp_path / "zs.json").read_text())
    top1 = float(((image_embeds @ weights.T).argmax(1) == truth).double().mean())
    assert code == 0 and summary["num_examples"] == len(rows) and summary["metrics"]["top1"] == pytest.approx(top1)
    code, _ = _run(capsys, "eval", "--model", str(folder), "--data", str(setup["root"] / "m.jsonl"),
                   "--task", "retrieval", "--dtype", "float32", "--json", str(tmp_path / "r.json"))
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    want = retrieval_recall_from_embeddings(image_embeds, texts([r["caption"] for r in rows]),
                                            torch.arange(len(rows)), ks=(1, 5, 10))
    assert code == 0
    for k in (1, 5, 10):
        assert metrics[f"i2t_r{k}"] == pytest.approx(want.image_to_text[k])
        assert metrics[f"t2i_r{k}"] == pytest.approx(want.text_to_image[k])


def test_a_folder_saved_by_transformers_dispatches_by_its_processor_config(setup, tmp_path):
    """A transformers-5 layout (processor_config.json with the image processor nested, no
    preprocessor_config.json) is read, its image_processor_type picks NaFlex, and the embeddings
    are Siglip2Model's own."""
    folder = tmp_path / "hf"
    tf.Siglip2Model.from_pretrained(setup["folder"]).save_pretrained(folder)
    pil = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    tf.Siglip2Processor(image_processor=pil, tokenizer=tf.AutoTokenizer.from_pretrained(setup["folder"])).save_pretrained(
        folder)
    assert not (folder / "preprocessor_config.json").exists() and (folder / "processor_config.json").is_file()
    tt = vlmkit.load_two_tower(str(folder), dtype="float32")
    assert isinstance(tt.processor.images, NaflexImages)
    files = _files(setup)
    hf = tf.Siglip2Model.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf.get_image_features(**pil([Image.open(f) for f in files], return_tensors="pt")).pooler_output
    err = (tt.embed_images(files) - ref / ref.norm(dim=-1, keepdim=True)).abs().max()
    assert err <= ATOL, err
