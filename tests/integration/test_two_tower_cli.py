"""`vlmkit embed / classify / retrieve` and `vlmkit eval --task zeroshot|retrieval` on a SigLIP
trained for a few steps by `train-contrastive` (its export) and a random CoCa from `vlmkit create`,
checked against direct calls of the loaded model on independently made inputs (the reference
SigLIP preprocessing and hand-built token rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import vlmkit
from vlmkit.cli import build_parser, main
from vlmkit.data.image import preprocess_images
from vlmkit.data.processors.two_tower import image_config
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.eval.retrieval import retrieval_recall_from_embeddings
from vlmkit.weights.hf import load_hf

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZES = [(48, 40), (32, 32), (70, 20)]  # (w, h): every image is resized, the 32 x 32 one is not
LABELS = list(COLOURS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_tower")
    (root / "images").mkdir()
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        for j, (w, h) in enumerate(SIZES[:2]):
            image = Image.new("RGB", (w, h), (240, 240, 240))
            ImageDraw.Draw(image).ellipse([w // 6, h // 6, w - w // 6, h - h // 6], fill=rgb)
            path = root / "images" / f"{name}{j}.png"
            image.save(path)
            rows.append({"image": f"images/{path.name}", "caption": f"a {name} circle", "label": name})
    Image.new("RGB", SIZES[2], (90, 90, 90)).save(root / "images" / "grey.png")
    rows.append({"image": "images/grey.png", "caption": "a grey picture", "label": "red"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train-contrastive", "siglip", "--smoke", "--data", str(root / "m.jsonl"),
                 "--out", str(root / "run"), "--steps", "3"]) == 0
    assert main(["create", "--family", "coca", "--preset", "debug", str(root / "coca")]) == 0
    return {"root": root, "siglip": root / "run" / "export", "coca": root / "coca", "rows": rows}


def _images(setup) -> list[str]:
    return sorted(str(p) for p in (setup["root"] / "images").iterdir())


def _direct(folder):
    """The loaded model and its own embedding functions on independently prepared inputs."""
    model = load_hf(folder, dtype="float32")
    tok = Tokenizer.from_folder(folder)
    size = model.cfg.vision.image_size

    @torch.no_grad()
    def images(paths):
        return model.encode_image(preprocess_images(paths, size))  # reference SigLIP preprocessing

    @torch.no_grad()
    def texts(strings):
        fmt = model.text_format
        rows = [([tok.bos_id] if fmt.bos else []) + tok.encode(s) + [tok.eos_id] for s in strings]
        T = fmt.max_len if fmt.pad_to_max else max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_id] * (T - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
        return model.encode_text(ids, mask)

    return model, images, texts


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("family", ["siglip", "coca"])
def test_embed_images_npy_and_texts_jsonl_equal_the_models_embeddings(setup, family, tmp_path, capsys):
    folder = setup[family]
    _, images, texts = _direct(folder)
    code, out, _ = _run(capsys, "embed", "--model", str(folder), "--images", str(setup["root"] / "images"),
                        "--out", str(tmp_path / "img.npy"), "--dtype", "float32", "--batch-size", "3")
    assert code == 0 and "wrote 7 image embeddings" in out
    emb = np.load(tmp_path / "img.npy")
    meta = json.loads((tmp_path / "img.json").read_text())
    assert emb.dtype == np.float32 and meta["inputs"] == _images(setup) and meta["kind"] == "image"
    torch.testing.assert_close(torch.from_numpy(emb), images(meta["inputs"]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    (tmp_path / "t.txt").write_text("a red circle\n\na blue circle\n")
    code, _, _ = _run(capsys, "embed", "--model", str(folder), "--texts", str(tmp_path / "t.txt"),
                      "--text", "a grey picture", "--out", str(tmp_path / "txt.jsonl"), "--dtype", "float32")
    lines = [json.loads(ln) for ln in (tmp_path / "txt.jsonl").read_text().splitlines()]
    assert code == 0 and [ln["text"] for ln in lines] == ["a red circle", "a blue circle", "a grey picture"]
    got = torch.tensor([ln["embedding"] for ln in lines])
    torch.testing.assert_close(got, texts([ln["text"] for ln in lines]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["siglip", "coca"])
def test_classify_probabilities_are_the_models_logits_through_its_loss(setup, family, capsys):
    folder = setup[family]
    model, images, texts = _direct(folder)
    files = _images(setup)[:3]
    code, out, _ = _run(capsys, "classify", "--model", str(folder), *sum((["--image", f] for f in files), []),
                        "--labels", ",".join(LABELS), "--templates", "a {} circle", "--json", "--dtype", "float32")
    assert code == 0
    with torch.no_grad():
        logits = model.logits(images(files), texts([f"a {n} circle" for n in LABELS]))  # [I, C]
    sigmoid = model.cfg.contrastive_loss == "sigmoid"
    assert sigmoid == (family == "siglip")
    want = logits.sigmoid() if sigmoid else logits.softmax(-1)
    for row, probs in zip(json.loads(out), want):
        got = {r["label"]: r["probability"] for r in row["labels"]}
        assert [r["probability"] for r in row["labels"]] == sorted(got.values(), reverse=True)
        torch.testing.assert_close(torch.tensor([got[n] for n in LABELS]), probs, atol=1e-6, rtol=0)


def test_classify_table_and_top_k(setup, capsys):
    code, out, _ = _run(capsys, "classify", "--model", str(setup["coca"]), "--image", _images(setup)[0],
                        "--labels", "red,green,blue", "--top-k", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0] == _images(setup)[0] and len(lines) == 3
    assert {ln.split()[1] for ln in lines[1:]} <= set(LABELS)


@pytest.mark.parametrize("family", ["siglip", "coca"])
def test_retrieve_ranks_are_the_argsort_of_the_models_scores(setup, family, capsys):
    folder = setup[family]
    _, images, texts = _direct(folder)
    queries = ["a red circle", "a grey picture"]
    code, out, _ = _run(capsys, "retrieve", "--model", str(folder), "--images", str(setup["root"] / "images"),
                        *sum((["--query", q] for q in queries), []), "--top-k", "4", "--json", "--dtype", "float32")
    assert code == 0
    files = _images(setup)
    scores = images(files) @ texts(queries).T  # [I, Q]
    for q, row in enumerate(json.loads(out)):
        order = torch.argsort(scores[:, q], descending=True)[:4]
        assert [r["image"] for r in row["results"]] == [files[i] for i in order]
        torch.testing.assert_close(torch.tensor([r["score"] for r in row["results"]]), scores[order, q],
                                   atol=1e-6, rtol=0)


def test_eval_zeroshot_and_retrieval_equal_direct_computation(setup, tmp_path, capsys):
    folder, rows = setup["siglip"], setup["rows"]
    model, images, texts = _direct(folder)
    paths = [str(setup["root"] / r["image"]) for r in rows]
    with torch.no_grad():
        logits = model.logits(images(paths), texts([f"a photo of a {n}." for n in LABELS]))
    truth = torch.tensor([LABELS.index(r["label"]) for r in rows])
    code, out, _ = _run(capsys, "eval", "--model", str(folder), "--data", str(setup["root"] / "m.jsonl"),
                        "--task", "zeroshot", "--dtype", "float32", "--json", str(tmp_path / "zs.json"))
    summary = json.loads((tmp_path / "zs.json").read_text())
    assert code == 0 and summary["num_examples"] == len(rows)
    assert summary["metrics"]["top1"] == pytest.approx(float((logits.argmax(1) == truth).double().mean()))
    code, out, _ = _run(capsys, "eval", "--model", str(folder), "--data", str(setup["root"] / "m.jsonl"),
                        "--task", "retrieval", "--dtype", "float32", "--json", str(tmp_path / "r.json"))
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    want = retrieval_recall_from_embeddings(images(paths), texts([r["caption"] for r in rows]),
                                            torch.arange(len(rows)), ks=(1, 5, 10))
    assert code == 0 and set(metrics) == {f"{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    for k in (1, 5, 10):
        assert metrics[f"i2t_r{k}"] == pytest.approx(want.image_to_text[k])
        assert metrics[f"t2i_r{k}"] == pytest.approx(want.text_to_image[k])


def test_training_export_records_its_image_preprocessing(setup):
    """train-contrastive writes the preprocessing it trained with beside the weights; inference reads it."""
    export = setup["siglip"]
    written = json.loads((export / "preprocessor_config.json").read_text())
    model = load_hf(export, dtype="float32")
    assert written == json.loads(json.dumps(image_config(model)))  # the family's, as a preset was trained
    tt = vlmkit.load_two_tower(str(export))
    side = model.cfg.vision.image_size
    assert tt.processor.images.config.size == {"height": side, "width": side}


def test_library_api_matches_the_cli(setup, capsys):
    tt = vlmkit.load_two_tower(str(setup["coca"]), dtype="float32")
    files = _images(setup)
    ranked = tt.retrieve("a blue circle", files, top_k=3)
    code, out, _ = _run(capsys, "retrieve", "--model", str(setup["coca"]), "--images", str(setup["root"] / "images"),
                        "--query", "a blue circle", "--top-k", "3", "--json", "--dtype", "float32")
    assert code == 0 and [files[i] for i, _ in ranked] == [r["image"] for r in json.loads(out)[0]["results"]]
    assert tt.embed_texts(["x", "y"]).shape == (2, tt.model.cfg.embed_dim)


def _one_line_error(capsys, *argv) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("vlmkit: error: ") and err.count("\n") == 1, err
    return err


def test_bad_inputs_are_one_line(setup, tmp_path, capsys):
    image, sig = _images(setup)[0], str(setup["siglip"])
    err = _one_line_error(capsys, "classify", "--model", "vlmkit-shapes-tiny", "--image", image, "--labels", "a,b")
    assert "paligemma" in err and "image-text" in err
    assert "--labels" in _one_line_error(capsys, "classify", "--model", sig, "--image", image, "--labels", "")
    assert "--labels" in _one_line_error(capsys, "classify", "--model", sig, "--image", image, "--labels", "cat,,dog")
    assert "does not exist" in _one_line_error(capsys, "retrieve", "--model", sig, "--images", str(tmp_path / "none"),
                                               "--query", "x")
    (tmp_path / "empty").mkdir()
    assert "no image files" in _one_line_error(capsys, "embed", "--model", sig, "--images", str(tmp_path / "empty"),
                                               "--out", str(tmp_path / "e.npy"))
    assert "not both" in _one_line_error(capsys, "embed", "--model", sig, "--image", image, "--text", "t",
                                         "--out", str(tmp_path / "e.npy"))
    assert ".npy" in _one_line_error(capsys, "embed", "--model", sig, "--text", "t", "--out", str(tmp_path / "e.csv"))
    (tmp_path / "e.npy").write_bytes(b"keep")
    kept = str(tmp_path / "e.npy")
    assert "--force" in _one_line_error(capsys, "embed", "--model", sig, "--text", "t", "--out", kept)
    assert (tmp_path / "e.npy").read_bytes() == b"keep"
    assert "{}" in _one_line_error(capsys, "classify", "--model", sig, "--image", image, "--labels", "a,b",
                                   "--templates", "no placeholder")
    (tmp_path / "nolabel.jsonl").write_text(json.dumps({"image": image}) + "\n")
    assert "label" in _one_line_error(capsys, "eval", "--model", sig, "--data", str(tmp_path / "nolabel.jsonl"),
                                      "--task", "zeroshot")
    assert "not among" in _one_line_error(capsys, "eval", "--model", sig, "--data", str(setup["root"] / "m.jsonl"),
                                          "--task", "zeroshot", "--labels", "red,green")


def test_help_snapshot():
    """The three commands' options are a user-facing contract: they must not vanish silently."""
    subs = build_parser()._subparsers._group_actions[0].choices
    want = {"embed": ("--model", "--images", "--image", "--texts", "--text", "--out", "--force", "--batch-size"),
            "classify": ("--model", "--image", "--labels", "--templates", "--top-k", "--json", "--device"),
            "retrieve": ("--model", "--images", "--query", "--top-k", "--json", "--dtype"),
            "eval": ("--task", "--labels", "--templates")}
    for cmd, options in want.items():
        text = subs[cmd].format_help()
        assert all(o in text for o in options), cmd
    assert "zeroshot" in subs["eval"].format_help() and "retrieval" in subs["eval"].format_help()
