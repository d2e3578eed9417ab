"""The family registry: lookups, one-line errors, and every family through create / info / load."""

import json

import pytest
import torch

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import CheckpointError, ConfigError, TokenizerError
from vlmkit.generation import SamplingConfig, generate
from vlmkit.models.registry import FamilySpec, families, family_for_model_type, family_of, get_family, register
from vlmkit.pipeline import Pipeline
from vlmkit.weights.create import create_checkpoint
from vlmkit.weights.hf import load_hf, read_config, save_hf
from vlmkit.weights.info import model_info

TEXT_FAMILIES = ["paligemma", "siglip", "coca", "gemma", "llava", "llava_next", "idefics3", "internvl", "deepseek_vl",
                 "deepseek_vl_hybrid", "mistral3", "qwen2_vl", "qwen2_5_vl", "siglip2"]


@pytest.fixture(scope="module")
def paligemma_folder(tmp_path_factory):
    return create_checkpoint(tmp_path_factory.mktemp("pg") / "model", "debug", seed=0)


def _create(family, tmp_path, tokenizer_dir):
    return create_checkpoint(tmp_path / family, "debug", seed=1, family=family, tokenizer_dir=tokenizer_dir)


def test_records_are_consistent():
    names = [f.name for f in families()]
    assert set(names) >= {"paligemma", "gemma", "siglip", "siglip_vision", "coca"}
    types = [t for f in families() for t in f.model_types]
    assert len(types) == len(set(types))
    for spec in families():
        cfg = spec.preset("debug")
        assert type(cfg) is spec.config_class
        model = spec.model_class(cfg)
        assert family_of(model) is spec and family_of(cfg) is spec
        blocks = spec.blocks(model)
        assert blocks and all(any(b is m for m in model.modules()) for b in blocks)
        assert (spec.generation is not None) == (spec.kind == "vlm")


def test_unknown_names_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"unsupported model_type 'blip-2' \(supported: .*paligemma") as e:
        family_for_model_type("blip-2")
    assert "\n" not in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    with pytest.raises(CheckpointError, match="config.json: unsupported model_type 'blip-2'"):
        read_config(tmp_path)
    with pytest.raises(ConfigError, match="unknown model family 'blip-2'; choose from .*coca"):
        get_family("blip-2")
    with pytest.raises(ConfigError, match="unknown siglip preset 'huge'; choose from .*debug"):
        create_checkpoint(tmp_path / "x", "huge", family="siglip")
    assert not (tmp_path / "x").exists()


def test_a_name_or_model_type_cannot_be_registered_twice():
    spec = get_family("gemma")
    with pytest.raises(ValueError, match="registered twice"):
        register(spec)
    clone = FamilySpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "name": "gemma-copy"})
    with pytest.raises(ValueError, match="model_type 'gemma' of 'gemma-copy' is already read by 'gemma'"):
        register(clone)


def test_deepseek_vl_takes_the_placeholder_id(paligemma_folder):
    """The image id is `<image_placeholder>`'s: a tokenizer with only `<image>` (PaliGemma's) is one line."""
    spec = get_family("deepseek_vl")
    with pytest.raises(TokenizerError, match=r"^the tokenizer has no <image_placeholder> token, which DeepSeek-VL"):
        spec.with_tokenizer(spec.preset("debug"), Tokenizer.from_folder(paligemma_folder))


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_create_info_load_round_trip(family, paligemma_folder, tmp_path):
    folder = paligemma_folder if family == "paligemma" else _create(family, tmp_path, paligemma_folder)
    model = load_hf(folder, dtype="float32")
    assert family_of(model).name == family
    info = model_info(folder)
    assert info["family"] == family
    parts = {k.removeprefix("params."): int(v.replace(",", "")) for k, v in info.items()
             if k.startswith("params.")}
    total = parts.pop("total")
    assert set(parts) == {name.split(".")[0] for name, _ in model.named_parameters()}
    assert total == sum(p.numel() for p in model.parameters()) == sum(parts.values())
    again = load_hf(save_hf(model, tmp_path / "again"), dtype="float32")
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_paligemma_default_parts(paligemma_folder):
    info = model_info(paligemma_folder)
    assert {k for k in info if k.startswith("params.")} == {
        "params.vision_tower", "params.projector", "params.language_model", "params.total"}
    assert json.loads((paligemma_folder / "config.json").read_text())["model_type"] == "paligemma"
    assert (paligemma_folder / "preprocessor_config.json").is_file()


def test_coca_folder_is_strict(paligemma_folder, tmp_path):
    folder = _create("coca", tmp_path, paligemma_folder)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "vlmkit-coca"
    (folder / "config.json").write_text(json.dumps({**cfg, "num_experts": 4}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown CoCa config fields \['num_experts'\]"):
        load_hf(folder)


def test_non_generating_families_fail_in_one_line(paligemma_folder, tmp_path):
    folder = _create("siglip", tmp_path, paligemma_folder)
    with pytest.raises(CheckpointError, match="holds a siglip model \\(image-text\\), which the text pipeline"):
        Pipeline.load(folder)
    model = load_hf(folder)
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with pytest.raises(ConfigError, match="siglip models do not generate text"):
        generate(model, None, batch, SamplingConfig(max_new_tokens=2))


def test_trainers_refuse_another_familys_folder(paligemma_folder, tmp_path):
    from vlmkit.data.tokenizer import Tokenizer
    from vlmkit.training.config import TrainConfig
    from vlmkit.training.recipes import build_model
    from vlmkit.training.recipes.contrastive import _load_folder

    folder = _create("siglip", tmp_path, paligemma_folder)
    with pytest.raises(CheckpointError, match="holds a siglip model; the PaliGemma recipes train paligemma"):
        build_model(TrainConfig(), folder, Tokenizer.from_folder(folder))
    with pytest.raises(CheckpointError, match="holds a siglip model, not a coca checkpoint"):
        _load_folder(folder, "coca")
    assert family_of(_load_folder(_create("coca", tmp_path, paligemma_folder), "coca")).name == "coca"
