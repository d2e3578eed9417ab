"""ITM as an option of contrastive / CoCa training (`--itm.weight W`): the loss it adds, the
head's gradients, caption groups, export + reload (identical scores), exact resume with the head
and its optimizer state, and one-line errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.data.processors.two_tower import image_config
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.init import init_weights
from vlmkit.models.itm import ItmHeadConfig
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.training.checkpoint import latest_checkpoint
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.config import apply_overrides
from vlmkit.training.contrastive import ContrastiveLoss, text_vocab_size, tokenize_captions
from vlmkit.training.itm import coca_scorer, itm_loss, two_tower_scorer
from vlmkit.training.itm_head import ITM_CONFIG, ITM_WEIGHTS, caption_ids, load_itm_head, load_itm_model
from vlmkit.training.recipes.contrastive import (CONTRASTIVE_RECIPES, build_model, export_model, main,
                                                 run_contrastive, synthetic_pairs)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_small_tokenizer(synthetic_pairs(64, 0, 32).texts, tmp_path_factory.mktemp("tok"), 320)


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_folder(tok_dir)


def _coca(tok) -> CoCa:
    cfg = CocaConfig.from_preset("debug", vocab_size=text_vocab_size(tok), pad_token_id=tok.pad_id,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    return init_weights(CoCa(cfg), seed=0)


def _models(tok):
    return {"siglip": build_model(SiglipConfig.from_preset("debug"), tok, 0.02, 0), "coca": _coca(tok)}


def _batch(tok, model, n=6):
    pairs = synthetic_pairs(n, 3, 32)
    ids, mask = tokenize_captions(tok, pairs.texts, model)
    return {"pixel_values": pairs.images.float() / 127.5 - 1, "input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["siglip", "coca"])
def test_itm_loss_is_added_and_trains_the_head(tok, family):
    model = _models(tok)[family]
    b = _batch(tok, model)
    root = ContrastiveLoss(model, itm=model.itm_head_config, itm_weight=0.5)
    torch.manual_seed(1)
    loss, parts = root(**b)
    plain, plain_parts = ContrastiveLoss(model)(**b)
    torch.testing.assert_close(loss, plain + 0.5 * parts["itm"])
    assert "itm" not in plain_parts
    # The term is `itm_loss` on the model's own outputs with the same negatives drawn.
    ids, mask = b["input_ids"], b["attention_mask"]
    torch.manual_seed(1)
    if family == "siglip":
        img, txt = model.encode_image(b["pixel_values"]), model.encode_text(ids, mask)
        score_fn = two_tower_scorer(root.itm_head, img, txt)
    else:
        out = model(**b)
        img, txt, score_fn = out.image_embeds, out.text_embeds, coca_scorer(model, root.itm_head, out)
    ref = itm_loss(score_fn, model.logit_scale.exp() * img @ txt.T, group_ids=caption_ids(ids, mask))
    torch.testing.assert_close(parts["itm"], ref.loss.detach())
    loss.backward()
    for name, p in root.itm_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_caption_ids_ignore_padding_and_tell_captions_apart():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 0, 0], [5, 6, 8, 0, 0], [5, 6, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    h = caption_ids(ids, mask)
    assert h[0] == h[1] and len({int(h[0]), int(h[2]), int(h[3])}) == 3
    torch.testing.assert_close(caption_ids(ids[:, :3], mask[:, :3]), h, rtol=0, atol=0)  # shorter padding


@pytest.mark.parametrize("family", ["siglip", "coca"])
def test_exported_head_reloads_with_identical_scores(tok, tok_dir, tmp_path, family):
    model = _models(tok)[family].eval()
    head_cfg = model.itm_head_config
    torch.manual_seed(3)
    head = head_cfg.build().eval()
    folder = export_model(model, tmp_path / "export", tok_dir, image_config(model), (head, head_cfg))
    assert json.loads((folder / ITM_CONFIG).read_text())["fusion"] == head_cfg.fusion
    loaded, loaded_head = load_itm_model(folder)
    b = _batch(tok, model, 4)
    with torch.no_grad():
        if family == "siglip":
            feats = [(m.encode_image(b["pixel_values"]), m.encode_text(b["input_ids"], b["attention_mask"]))
                     for m in (model, loaded)]
            a, c = head(*feats[0]), loaded_head(*feats[1])
        else:
            a, c = head(model(**b).fused), loaded_head(loaded(**b).fused)
    assert torch.equal(a, c)
    export_model(model, folder, tok_dir, image_config(model))  # re-exported without a head: none left
    with pytest.raises(CheckpointError, match="has no ITM head: train it with --itm.weight > 0"):
        load_itm_model(folder)


def test_a_head_of_another_model_is_refused(tok, tok_dir, tmp_path):
    model = _models(tok)["siglip"]
    wrong = ItmHeadConfig(fusion="pair", dim=model.itm_head_config.dim + 1, hidden_dim=4)
    folder = export_model(model, tmp_path / "e", tok_dir, image_config(model), (wrong.build(), wrong))
    with pytest.raises(CheckpointError, match="needs a pair head of width"):
        load_itm_head(folder, model)
    (folder / ITM_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not a valid ITM head config"):
        load_itm_head(folder, model)
    (folder / ITM_CONFIG).write_text(json.dumps({"fusion": "pair", "dim": "32", "hidden_dim": 4}))
    with pytest.raises(CheckpointError, match="dim and hidden_dim must be integers"):
        load_itm_head(folder, model)


@pytest.mark.parametrize("recipe", ["siglip", "coca"])
def test_resume_with_the_itm_head_is_exact_and_exports_it(tmp_path, recipe):
    straight = apply_overrides(CONTRASTIVE_RECIPES[recipe](smoke=True),
                               {"out_dir": str(tmp_path / "a"), "itm.weight": "1", "itm.hidden_dim": "24"})
    full = run_contrastive(straight)
    part = apply_overrides(straight, {"out_dir": str(tmp_path / "b"), "stop_after": "3"})
    run_contrastive(part)
    resumed = run_contrastive(apply_overrides(part, {"stop_after": "none"}), resume=True)
    assert resumed.losses == full.losses
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["itm"] > 0 for m in metrics if "loss" in m)
    ckpts = [latest_checkpoint(tmp_path / r / "checkpoints") for r in "ab"]
    for file in ("model.safetensors", "optimizer.safetensors"):
        a, b = (load_file(str(c / file)) for c in ckpts)
        assert a.keys() == b.keys() and any("itm_head." in k for k in a), file
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # The export holds the trained head: the last checkpoint's, with its config.
    final = load_file(str(ckpts[0] / "model.safetensors"))
    exported = load_file(str(tmp_path / "a" / "export" / ITM_WEIGHTS))
    assert exported.keys() == {k.removeprefix("itm_head.") for k in final if k.startswith("itm_head.")}
    for k, v in exported.items():
        assert torch.equal(v, final[f"itm_head.{k}"]), k
    model, head = load_itm_model(tmp_path / "a" / "export")
    if recipe == "siglip":
        assert head.fc1.out_features == 24  # itm.hidden_dim recorded and rebuilt


def test_resume_refuses_a_run_that_adds_the_head(tmp_path):
    part = apply_overrides(CONTRASTIVE_RECIPES["siglip"](smoke=True), {"out_dir": str(tmp_path), "stop_after": "3"})
    run_contrastive(part)
    with pytest.raises(CheckpointError, match="has no parameter itm_head"):
        run_contrastive(apply_overrides(part, {"itm.weight": "1", "stop_after": "none"}), resume=True)


def test_itm_errors_are_one_line(tmp_path, capsys):
    cases = [(["siglip", "--itm.weight", "-1"], "itm.weight must be >= 0"),
             (["siglip", "--itm.hidden_dim", "-2"], "itm.hidden_dim must be >= 0"),
             (["siglip", "--itm.weigth", "1"], "unknown config key 'itm.weigth'"),
             (["coca", "--itm.weight", "1", "--model.caption_weight", "0"], "itm.weight > 0 needs model.caption_weight > 0")]
    for args, needle in cases:
        assert main([*args, "--smoke", "--out", str(tmp_path / args[0])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlmkit: error:") and needle in err and err.count("\n") == 1, err
    with pytest.raises(ConfigError):
        apply_overrides(CONTRASTIVE_RECIPES["siglip"](smoke=True), {"itm.weight": "x"})
