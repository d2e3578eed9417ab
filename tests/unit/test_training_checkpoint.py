"""Checkpoint files: optimizer state without pickle, atomic writes, rotation, RNG; resolution."""

import json

import pytest
import torch

from vlmkit.errors import CheckpointError
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma import PaliGemma, PaliGemmaConfig
from vlmkit.models.siglip.model import interpolate_position_embeddings
from vlmkit.training import checkpoint as ckpt
from vlmkit.training.recipes.resolution import raise_resolution


def adam_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    sd = opt.state_dict()
    ids = [p for g in opt.param_groups for p in g["params"]]
    return {"state": {names[id(ids[i])]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [names[id(ids[i])] for i in g["params"]]} for g in sd["param_groups"]]}


def test_optimizer_state_round_trips_without_pickle():
    osd = adam_state()
    tensors, rest = ckpt.flatten_optimizer_state(osd)
    assert set(tensors) >= {"state/0.weight/exp_avg", "state/1.bias/step"}
    rest = json.loads(json.dumps(rest))  # must be plain JSON
    back = ckpt.unflatten_optimizer_state(tensors, rest)
    assert back["param_groups"][0]["betas"] == (0.8, 0.9)
    for name, state in osd["state"].items():
        for key, value in state.items():
            assert torch.equal(back["state"][name][key], value)


def write(root, step, keep=2, model_state=None):
    return ckpt.save_checkpoint(root, step, model_state or {"w": torch.full((2,), float(step))}, adam_state(),
                                [ckpt.rng_state()], {"data": [{"epoch": 0, "position": step}]}, keep=keep)


def test_latest_pointer_rotation_and_contents(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        write(tmp_path, step)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000002", "step_000003"]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step_000003"
    model, optim, rngs, state = ckpt.load_checkpoint(latest)
    assert torch.equal(model["w"], torch.full((2,), 3.0)) and state["step"] == 3
    assert rngs["rank0"]["torch_cpu"].dtype == torch.uint8
    assert not any(p.suffix in (".pt", ".bin", ".pkl") for p in latest.iterdir())


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    write(tmp_path, 1)
    with pytest.raises(Exception):
        write(tmp_path, 2, model_state={"w": "not a tensor"})
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".step")] == []  # temp folder removed


def test_dangling_latest_is_reported(tmp_path):
    (tmp_path / "latest").write_text("step_000009")
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        ckpt.latest_checkpoint(tmp_path)


def test_rng_state_restores_the_stream():
    state = ckpt.rng_state()
    a = torch.rand(4)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(4), a)


def test_raise_resolution_interpolates_positions_and_follows_config():
    model = init_weights(PaliGemma(PaliGemmaConfig.from_preset("debug")), seed=0)
    bigger = raise_resolution(model, 64)
    assert bigger.cfg.vision.image_size == 64 and bigger.cfg.num_image_tokens == 64
    pos = bigger.vision_tower.position_embedding.weight
    assert pos.shape == (64, 32)
    torch.testing.assert_close(pos, interpolate_position_embeddings(model.vision_tower.position_embedding.weight, 8))
    assert torch.equal(bigger.projector.weight, model.projector.weight)
    ids = torch.full((1, 66), 511)
    ids[0, 64:] = torch.tensor([2, 7])
    assert bigger(ids, torch.randn(1, 3, 64, 64)).shape == (1, 66, model.cfg.text.vocab_size)
