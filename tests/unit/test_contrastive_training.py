"""Contrastive / CoCa training engine: batching, loss plumbing, freezing, optimizer groups, the
recipes' smoke runs (train, checkpoint, exact resume, retrieval eval, export) and Fashion-MNIST IO."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlmkit.data.fashion_mnist import CLASS_NAMES, INSTALL_HINT, load_fashion_mnist, read_idx
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import ConfigError, DataError
from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.init import init_weights
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.two_tower import SiglipTwoTower
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import OptimConfig, apply_overrides
from vlmkit.training.losses import caption_loss, contrastive_loss
from vlmkit.training.contrastive import (ContrastiveLoss, build_optimizer, freeze_unused, text_vocab_size,
                                         tokenize_captions)
from vlmkit.training.recipes.contrastive import (build_model, main, run_contrastive, siglip, synthetic_pairs,
                                                 unique_captions, coca as coca_recipe)
from vlmkit.weights.hf import load_hf

CAPTIONS = ["a red circle", "a blue square and a green star", "a yellow diamond", "a purple triangle"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    texts = synthetic_pairs(64, 0, 32).texts
    return Tokenizer.from_folder(build_small_tokenizer(texts, tmp_path_factory.mktemp("tok"), 320))


def _coca(tok, **kw) -> CoCa:
    cfg = CocaConfig.from_preset("debug", vocab_size=text_vocab_size(tok), pad_token_id=tok.pad_id,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **kw)
    return init_weights(CoCa(cfg), seed=0)


def _siglip(tok) -> SiglipTwoTower:
    return build_model(SiglipConfig.from_preset("debug"), tok, 0.02, 0)


def test_text_vocab_excludes_layout_tokens(tok):
    n = text_vocab_size(tok)
    assert n == tok.token_to_id("<loc0000>") < tok.vocab_size
    assert max(i for c in CAPTIONS for i in tok.encode(c)) < n


def test_tokenize_captions_coca_and_siglip_layouts(tok):
    coca = _coca(tok)
    ids, mask = tokenize_captions(tok, CAPTIONS, coca)
    lengths = mask.sum(1)
    assert ids.shape[1] == int(lengths.max())  # padded to the longest caption only
    for row, n, text in zip(ids, lengths, CAPTIONS):
        assert row[0] == tok.bos_id and row[n - 1] == tok.eos_id and (row[n:] == tok.pad_id).all()
        assert tok.decode(row[1:n - 1].tolist()) == text
    two = _siglip(tok)
    ids, mask = tokenize_captions(tok, CAPTIONS, two)
    assert ids.shape[1] == two.cfg.text.max_position_embeddings  # the pooled position is fixed
    assert all(row[n - 1] == tok.eos_id for row, n in zip(ids, mask.sum(1)))
    long_ids, long_mask = tokenize_captions(tok, [" and ".join(CAPTIONS * 3)], coca)
    assert long_ids.shape[1] == coca.cfg.context_length and long_ids[0, -1] == tok.eos_id


def test_freeze_unused_follows_the_loss_weights(tok):
    con_only = _coca(tok, caption_weight=0.0)
    assert "lm_head" in freeze_unused(con_only)
    assert not con_only.lm_head.weight.requires_grad and con_only.logit_scale.requires_grad
    cap_only = _coca(tok, contrastive_weight=0.0)
    freeze_unused(cap_only)
    assert not cap_only.logit_scale.requires_grad and cap_only.lm_head.weight.requires_grad
    with pytest.raises(ConfigError, match="nothing to train"):
        freeze_unused(_coca(tok, contrastive_weight=0.0, caption_weight=0.0))


def test_optimizer_decays_only_matrices_of_linear_layers(tok):
    model = _siglip(tok)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.text_tower.head.weight) in decayed
    assert id(model.vision_tower.head.attention.in_proj_weight) in decayed
    for p in (model.logit_scale, model.logit_bias, model.text_tower.token_embedding.weight,
              model.vision_tower.head.probe, model.text_tower.head.bias):
        assert id(p) not in decayed
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def _batch(tok, model, n=4):
    pairs = synthetic_pairs(n, 3, 32)
    ids, mask = tokenize_captions(tok, pairs.texts, model)
    return {"pixel_values": pairs.images.float() / 127.5 - 1, "input_ids": ids, "attention_mask": mask}


def test_loss_module_matches_the_models_losses(tok):
    torch.manual_seed(0)
    coca = _coca(tok)
    b = _batch(tok, coca)
    loss, parts = ContrastiveLoss(coca)(**b, caption_scale=0.5)
    out = coca(**b)
    ref_con = contrastive_loss("softmax", out.image_embeds, out.text_embeds, coca.logit_scale, coca.logit_bias)
    ref_cap = caption_loss(out.logits, b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(loss, ref_con + 2.0 * ref_cap * 0.5)
    torch.testing.assert_close(parts["caption"], ref_cap)
    # Contrastive-only: the fast path (no multimodal decoder) gives the same contrastive term.
    con = _coca(tok, caption_weight=0.0)
    loss, _ = ContrastiveLoss(con)(**b)
    out = con(**b)
    expected = contrastive_loss("softmax", out.image_embeds, out.text_embeds, con.logit_scale, con.logit_bias)
    torch.testing.assert_close(loss, expected)
    two = _siglip(tok)
    b = _batch(tok, two)
    loss, _ = ContrastiveLoss(two)(**b)
    out = two(**b)
    expected = contrastive_loss("sigmoid", out.image_embeds, out.text_embeds, two.logit_scale, two.logit_bias)
    torch.testing.assert_close(loss, expected)


def _losses(out: Path) -> list[float]:
    return [m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def test_coca_smoke_resume_is_exact_and_it_learns(tmp_path):
    straight = apply_overrides(coca_recipe(smoke=True), {"out_dir": str(tmp_path / "a"), "export": "false"})
    full = run_contrastive(straight)
    part = apply_overrides(straight, {"out_dir": str(tmp_path / "b"), "stop_after": "3"})
    run_contrastive(part)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_000003"
    with pytest.raises(ConfigError, match="already has checkpoints"):
        run_contrastive(part)
    resumed = run_contrastive(apply_overrides(part, {"stop_after": "none"}), resume=True)
    assert resumed.losses == full.losses and full.losses[-1] < full.losses[0]
    a, b = (load_file(str(latest_checkpoint(tmp_path / r / "checkpoints") / "model.safetensors")) for r in "ab")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert 0.0 <= full.eval["i2t_r1"] <= 1.0 and "t2i_r5" in full.eval


def test_siglip_smoke_exports_a_strict_hf_folder_and_clamps_temperature(tmp_path, capsys):
    out = tmp_path / "siglip"
    assert main(["siglip", "--smoke", "--out", str(out), "--model.max_logit_scale", "2.0",
                 "--precision", "bf16"]) == 0
    assert "exported" in capsys.readouterr().out
    model = load_hf(out / "export", dtype="float32")
    assert isinstance(model, SiglipTwoTower) and float(model.logit_scale.detach()) <= 2.0
    assert Tokenizer.from_folder(out / "export").vocab_size > model.cfg.text.vocab_size
    losses = _losses(out)
    assert len(losses) == 6 and all(np.isfinite(losses))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["clip", "--smoke", "--out", str(tmp_path), "--optim.lrr", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmkit: error: unknown config key 'optim.lrr'") and err.count("\n") == 1
    assert main(["siglip", "--smoke", "--out", str(tmp_path), "--model.caption_weight", "1"]) == 2
    assert "model.caption_weight does not apply to siglip" in capsys.readouterr().err
    assert siglip().data.batch_size == 1024  # the full recipe is a real pretraining config


def test_unique_captions_keeps_first_of_each():
    pairs = synthetic_pairs(40, 0, 32)
    keep = unique_captions(pairs, 1000)
    texts = [pairs.texts[i] for i in keep]
    assert len(set(texts)) == len(texts) == len(set(pairs.texts)) and keep == sorted(keep)


# --------------------------------------------------------------------------- Fashion-MNIST


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.array([9, 5])))
    data = load_fashion_mnist("train", tmp_path)
    assert data.images.shape == (2, 28, 28) and np.array_equal(data.images, images)
    assert data.labels.tolist() == [9, 5] and CLASS_NAMES[9] == "ankle boot"
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(DataError, match="expected 5"):
        read_idx(tmp_path / "bad")


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        load_fashion_mnist("test", tmp_path)
    assert "\n" not in str(e.value) and INSTALL_HINT in str(e.value)


def test_debian_fashion_mnist_if_installed():
    try:
        data = load_fashion_mnist("test")
    except DataError:
        pytest.skip("dataset-fashion-mnist is not installed")
    assert data.images.shape == (10000, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [1000] * 10
