"""Bad-input corpus, part 3: broken checkpoint folders (config, weights, shard index, preprocessor and
tokenizer files), each a one-line error naming the file and the field or key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.integration.bad_inputs_common import copy_model, debug_model, edit_json, image, run_bad  # noqa: F401

CONFIG = {  # name: (edit of config.json, expected cause)
    "list": (lambda d: [d], "config.json: expected a JSON object, got a list"),
    "string": (lambda d: "paligemma", "expected a JSON object, got a string"),
    "no_model_type": (lambda d: d.pop("model_type") and None, "unsupported model_type None"),
    "unknown_model_type": (lambda d: d.update(model_type="blip-2"), "unsupported model_type 'blip-2'"),
    "model_type_list": (lambda d: d.update(model_type=["paligemma"]), "unsupported model_type"),
    "vision_hidden_size_string": (lambda d: d["vision_config"].update(hidden_size="32"),
                                  "vision.hidden_size: expected an integer, got a string"),
    "vision_image_size_string": (lambda d: d["vision_config"].update(image_size="32"),
                                 "vision.image_size: expected an integer"),
    "text_layers_float": (lambda d: d["text_config"].update(num_hidden_layers=2.5),
                          "text.num_layers: expected an integer, got a number"),
    "text_eps_string": (lambda d: d["text_config"].update(rms_norm_eps="tiny"), "text.rms_norm_eps"),
    "text_eps_nan": (lambda d: d["text_config"].update(rms_norm_eps=float("nan")), "expected a finite number"),
    "negative_size": (lambda d: d["text_config"].update(intermediate_size=-64), "text.intermediate_size: must be >= 0"),
    "image_token_string": (lambda d: d.update(image_token_index="511"), "image_token_id: expected an integer"),
    "text_config_list": (lambda d: d.update(text_config=[1, 2]), "text_config: expected an object, got a list"),
    "vision_config_string": (lambda d: d.update(vision_config="big"), "vision_config: expected an object"),
    "rope_parameters_list": (lambda d: d["text_config"].update(rope_parameters=[1]), "a value has the wrong type"),
    "bad_activation": (lambda d: d["vision_config"].update(hidden_act="relu"), "unsupported vision_config.hidden_act 'relu'"),
    "heads_mismatch": (lambda d: d["vision_config"].update(num_attention_heads=5), "not a multiple of num_heads"),
}


# Every case through `info` (reads the config only); four through `generate` (the loading path).
_GENERATE_CONFIG = ("list", "vision_hidden_size_string", "negative_size", "text_eps_nan")


@pytest.mark.parametrize("case,command", [(c, "info") for c in sorted(CONFIG)]
                         + [(c, "generate") for c in _GENERATE_CONFIG])
def test_bad_config(case, command, debug_model, image, tmp_path, capsys):
    model = copy_model(debug_model, tmp_path / "m")
    edit, cause = CONFIG[case]
    edit_json(model / "config.json", edit)
    argv = ["info", "--model", model] if command == "info" else [
        "generate", "--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "1"]
    run_bad(capsys, argv, cause, tmp_path, debug_model)


def _tensors(model: Path) -> dict[str, torch.Tensor]:
    return load_file(model / "model.safetensors")


def _replace_tensor(model: Path, fn) -> None:
    tensors = _tensors(model)
    key = "multi_modal_projector.linear.bias"
    tensors[key] = fn(tensors[key])
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})


def _shard(model: Path, name: str) -> None:
    """Move the weights into a one-shard index whose entry for one key is `name`."""
    tensors = _tensors(model)
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    weight_map = {k: "model-00001-of-00001.safetensors" for k in tensors}
    weight_map[next(iter(weight_map))] = name
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _break(case: str, model: Path, tmp_path: Path) -> None:
    weights = model / "model.safetensors"
    if case == "no_config":
        (model / "config.json").unlink()
    elif case == "config_not_json":
        (model / "config.json").write_text("{model_type: paligemma")
    elif case == "config_not_utf8":
        (model / "config.json").write_bytes(b'{"model_type": "\xff"}')
    elif case == "config_empty":
        (model / "config.json").write_text("")
    elif case == "config_is_folder":
        (model / "config.json").unlink()
        (model / "config.json").mkdir()
    elif case == "no_weights":
        weights.unlink()
    elif case == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "garbage_weights":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    elif case == "int_tensor_in_float_param":
        _replace_tensor(model, lambda t: t.to(torch.int32))
    elif case == "bool_tensor_in_float_param":
        _replace_tensor(model, lambda t: t > 0)
    elif case == "mis_shaped_tensor":
        _replace_tensor(model, lambda t: torch.zeros(t.shape[0] + 1))
    elif case == "missing_tensor":
        tensors = _tensors(model)
        tensors.pop("multi_modal_projector.linear.bias")
        save_file(tensors, str(weights), metadata={"format": "pt"})
    elif case == "unexpected_tensor":
        tensors = {**_tensors(model), "extra.weight": torch.zeros(2)}
        save_file(tensors, str(weights), metadata={"format": "pt"})
    elif case == "index_parent_path":
        (tmp_path / "x.safetensors").write_bytes(weights.read_bytes())
        _shard(model, "../x.safetensors")
    elif case == "index_absolute_path":
        _shard(model, str(weights.resolve()))
    elif case == "index_climbing_path":
        (model / "sub").mkdir()
        _shard(model, "sub/../../m/model-00001-of-00001.safetensors")
    elif case == "index_missing_shard":
        _shard(model, "model-00002-of-00002.safetensors")
    elif case == "index_weight_map_list":
        (model / "model.safetensors.index.json").write_text('{"weight_map": ["model.safetensors"]}')
    elif case == "index_list":
        (model / "model.safetensors.index.json").write_text("[]")
    elif case == "index_shard_number":
        _shard(model, 7)


CHECKPOINT = {
    "no_config": "has no config.json",
    "config_not_json": "config.json is not valid JSON",
    "config_not_utf8": "config.json is not UTF-8",
    "config_empty": "config.json is not valid JSON",
    "config_is_folder": "has no config.json",
    "no_weights": "has no model.safetensors",
    "truncated_weights": "not a readable safetensors file",
    "garbage_weights": "not a readable safetensors file",
    "int_tensor_in_float_param": "tensor multi_modal_projector.linear.bias is int32",
    "bool_tensor_in_float_param": "multi_modal_projector.linear.bias is bool",
    "mis_shaped_tensor": "mis-shaped: multi_modal_projector.linear.bias",
    "missing_tensor": "missing keys: projector.bias",
    "unexpected_tensor": "unexpected keys: extra.weight",
    "index_parent_path": "'../x.safetensors' is outside the model folder",
    "index_absolute_path": "is outside the model folder",
    "index_climbing_path": "is outside the model folder",
    "index_missing_shard": "lists shard model-00002-of-00002.safetensors which does not exist",
    "index_weight_map_list": "weight_map: expected an object, got a list",
    "index_list": "model.safetensors.index.json: expected a JSON object",
    "index_shard_number": "expected a file name, got an integer",
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT))
def test_bad_checkpoint(case, debug_model, image, tmp_path, capsys):
    model = copy_model(debug_model, tmp_path / "m")
    _break(case, model, tmp_path)
    run_bad(capsys, ["generate", "--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "1",
                     "--dtype", "float32"], CHECKPOINT[case], tmp_path, debug_model)


SIDE_FILES = {  # (file, edit, cause)
    "std_zero": ("preprocessor_config.json", lambda d: d.update(image_std=[0.5, 0.0, 0.5]), "image_std: every value must be > 0"),
    "std_negative": ("preprocessor_config.json", lambda d: d.update(image_std=-1), "image_std: every value must be > 0"),
    "std_nan": ("preprocessor_config.json", lambda d: d.update(image_std=[float("nan")] * 3), "image_std: expected finite numbers"),
    "mean_length_2": ("preprocessor_config.json", lambda d: d.update(image_mean=[0.5, 0.5]), "image_mean: expected one number or 3"),
    "mean_length_1": ("preprocessor_config.json", lambda d: d.update(image_mean=[0.5]), "got 1 values"),
    "mean_string": ("preprocessor_config.json", lambda d: d.update(image_mean="0.5"), "image_mean"),
    "mean_bool": ("preprocessor_config.json", lambda d: d.update(image_mean=[True, 0.5, 0.5]), "image_mean"),
    "preprocessor_list": ("preprocessor_config.json", lambda d: [d], "preprocessor_config.json: expected a JSON object"),
    "tokenizer_config_list": ("tokenizer_config.json", lambda d: [d], "tokenizer_config.json: expected a JSON object"),
    "tokenizer_config_bos_number": ("tokenizer_config.json", lambda d: d.update(bos_token=2), "bos_token: expected a token string"),
    "special_tokens_map_string": ("special_tokens_map.json", lambda d: "x", "special_tokens_map.json: expected a JSON object"),
    "tokenizer_json_list": ("tokenizer.json", lambda d: [], "tokenizer.json"),
}


@pytest.mark.parametrize("case", sorted(SIDE_FILES))
def test_bad_side_file(case, debug_model, image, tmp_path, capsys):
    model = copy_model(debug_model, tmp_path / "m")
    name, edit, cause = SIDE_FILES[case]
    edit_json(model / name, edit)
    run_bad(capsys, ["generate", "--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "1"],
            cause, tmp_path, debug_model)


def test_shards_linked_from_elsewhere_load(debug_model, image, tmp_path, capsys):
    """The Hugging Face cache layout: shard names inside the folder, files symlinked to blobs outside."""
    from vlmkit.cli import main

    model = copy_model(debug_model, tmp_path / "snapshot")
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    _shard(model, "model-00001-of-00001.safetensors")
    shard = model / "model-00001-of-00001.safetensors"
    shard.rename(blobs / "abc123")
    shard.symlink_to(blobs / "abc123")
    assert main(["info", "--model", str(model)]) == 0 and capsys.readouterr().err == ""


def test_float_checkpoint_in_other_float_dtype_is_cast(debug_model, image, tmp_path, capsys):
    """Not an error: float32 weights load as bfloat16 when asked (same kind, cast)."""
    from vlmkit.cli import main

    rc = main(["generate", "--model", str(debug_model), "--image", str(image), "--prompt", "x",
               "--max-new-tokens", "1", "--dtype", "bfloat16"])
    assert rc == 0 and capsys.readouterr().err == ""


def test_model_path_is_a_file(image, tmp_path, capsys):
    run_bad(capsys, ["generate", "--model", image, "--image", image, "--prompt", "x"],
            "is not a checkpoint folder", tmp_path)
