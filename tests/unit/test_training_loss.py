"""Suffix-only loss, freezing, parameter groups, accumulation and activation checkpointing."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.training.config import TrainConfig, apply_overrides
from vlmkit.training.freeze import apply_freeze, component_of
from vlmkit.training.optim import param_groups
from vlmkit.training.parallelize import DistInfo, apply_activation_checkpointing
from vlmkit.training.trainer import SuffixLMLoss, Trainer

N_IMG, PREFIX, SUFFIX = 16, 5, 6  # debug preset: 32 px / 8 px patches = 16 image tokens


def tiny_model(seed: int = 0) -> PaliGemma:
    return init_weights(PaliGemma(PaliGemmaConfig.from_preset("debug")), seed=seed).train()


def tiny_batch(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """[image x16][bos][prefix x5][suffix x6] per row; the last row right-padded by 2."""
    g = torch.Generator().manual_seed(seed)
    T = N_IMG + 1 + PREFIX + SUFFIX
    ids = torch.randint(4, 500, (batch, T), generator=g)
    ids[:, :N_IMG], ids[:, N_IMG] = 511, 2
    types = torch.zeros(batch, T, dtype=torch.long)
    types[:, N_IMG + 1 + PREFIX:] = 1
    mask = torch.ones(batch, T, dtype=torch.long)
    mask[-1, -2:], types[-1, -2:], ids[-1, -2:] = 0, 0, 0
    labels = ids.masked_fill(types == 0, -100)
    pix = torch.randn(batch, 3, 32, 32, generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, pixel_values=pix)


def test_loss_is_mean_next_token_ce_over_suffix_only():
    model, batch = tiny_model(), tiny_batch(3)
    loss_sum = SuffixLMLoss(model)(**batch)
    logits = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["token_type_ids"])
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), reduction="sum")
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert n == 3 * SUFFIX - 2  # padding excluded
    torch.testing.assert_close(loss_sum, ref, rtol=1e-6, atol=1e-5)


def test_prefix_labels_change_nothing():
    model, batch = tiny_model(), tiny_batch(2)
    loss = SuffixLMLoss(model)
    a = loss(**batch)
    grads_a = torch.autograd.grad(a, list(model.parameters()))
    noisy = dict(batch)
    noisy["labels"] = torch.where(batch["token_type_ids"] == 0, batch["input_ids"], batch["labels"])
    b = loss(**noisy)
    grads_b = torch.autograd.grad(b, list(model.parameters()))
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    # ... whereas a changed suffix label does change the loss.
    changed = dict(batch)
    changed["labels"] = batch["labels"].clone()
    changed["labels"][0, -1] = (changed["labels"][0, -1] + 1) % 500
    assert not torch.equal(a, loss(**changed))


class ListStream:
    """Stand-in for BatchStream: micro-batches cut from fixed batches, in order."""

    def __init__(self, batches: list[dict], micro_batch_size: int):
        self.micro_batch_size = micro_batch_size
        self.items = [{k: v[i:i + micro_batch_size] for k, v in b.items()}
                      for b in batches for i in range(0, b["input_ids"].shape[0], micro_batch_size)]
        self.pos = 0

    def next_batch(self):
        self.pos += 1
        return self.items[self.pos - 1]

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def make_trainer(tmp_path, model, batches, micro, **overrides) -> Trainer:
    base = {"out_dir": str(tmp_path), "steps": "3", "data.batch_size": "4", "optim.lr": "1e-2",
            "log_every": "100", "data.manifest": "unused"}
    cfg = apply_overrides(TrainConfig(), {**base, **overrides})
    return Trainer(cfg, model, ListStream(batches, micro), DistInfo())


def test_frozen_components_stay_bit_identical(tmp_path):
    model = tiny_model()
    freeze = replace(TrainConfig().freeze, vision_tower=True, embeddings=True)
    trainable = apply_freeze(model, freeze)
    assert trainable["vision_tower"] == 0 and trainable["embeddings"] == 0 and trainable["decoder"] > 0
    before = copy.deepcopy(model.state_dict())
    make_trainer(tmp_path, model, [tiny_batch(4, s) for s in range(3)], 4, **{"optim.weight_decay": "0.1"}).fit()
    after = model.state_dict()
    for name, value in before.items():
        frozen = component_of(name) in ("vision_tower", "embeddings")
        assert torch.equal(value, after[name]) == frozen, name


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    batches = [tiny_batch(4, s) for s in range(3)]
    a, b = tiny_model(), tiny_model()
    ra = make_trainer(tmp_path / "a", a, batches, 4).fit()
    rb = make_trainer(tmp_path / "b", b, batches, 2, **{"data.grad_accum": "2"}).fit()
    # The loss is normalised by the step's total suffix tokens, not averaged per micro-batch
    # (rows here have unequal token counts, so a per-micro-batch mean would differ).
    assert ra.losses == pytest.approx(rb.losses, rel=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        # atol 3e-5: the summation order of the two gradients differs; an AVX2-only CPU
        # showed 1.03e-5 on one of 8192 elements (one Adam step at lr 2.5e-3 moves ~2.5e-3).
        torch.testing.assert_close(pa, pb, rtol=0, atol=3e-5, msg=lambda m: f"{name}: {m}")


def test_activation_checkpointing_gives_the_same_gradients():
    batch = tiny_batch(2)
    plain, ckpt = tiny_model(), tiny_model()
    assert apply_activation_checkpointing(ckpt) == 4  # 2 SigLIP + 2 Gemma blocks
    grads = []
    for model in (plain, ckpt):
        SuffixLMLoss(model)(**batch).backward()
        grads.append([p.grad for p in model.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    assert set(plain.state_dict()) == set(ckpt.state_dict())  # names unchanged


def test_param_groups_scale_lr_and_skip_decay_on_vectors_and_tables():
    model = tiny_model()
    cfg = apply_overrides(TrainConfig(), {"optim.lr": "1e-3", "optim.weight_decay": "0.1",
                                          "lr_scale.projector": "10", "lr_scale.vision_tower": "0.5"})
    groups = param_groups(model, cfg.optim, cfg.lr_scale)
    by = {(g["component"], g["weight_decay"] > 0): g for g in groups}
    assert by[("projector", True)]["lr"] == pytest.approx(1e-2)
    assert by[("vision_tower", True)]["lr"] == pytest.approx(5e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "language_model.embed_tokens.weight" not in decayed
    assert "vision_tower.position_embedding.weight" not in decayed
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert "language_model.layers.0.self_attn.q_proj.weight" in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_bf16_autocast_step_runs(tmp_path):
    model = tiny_model()
    result = make_trainer(tmp_path, model, [tiny_batch(4, s) for s in range(3)], 4, precision="bf16").fit()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert next(model.parameters()).dtype == torch.float32  # master weights stay fp32
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
